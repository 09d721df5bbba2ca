#!/usr/bin/env python
"""How long the viewer takes to open a dataset: each page rendered cold (fresh caches) and then again (warm).

    python tools/make_sample_dataset.py --out /tmp/big --num-train 3000 --num-test 20 --seed 1
    python benchmarks/viewer_open.py --data-root /tmp/big [--pages Dataset Browse]

Runs tools/viewer.py in Streamlit's AppTest (the same script the server runs, without a browser), with
--data-root, and times: the first render of each page (reading the json, counting, thumbnails: the cold open),
then a rerun of the same page (what every later interaction costs, the caches warm), and, on the Dataset page,
the pixel-share button (it reads every image and label map; datasets above 400 images compute it on a click).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

VIEWER = Path(__file__).resolve().parents[1] / "tools" / "viewer.py"


def timed(step) -> tuple[AppTest, float]:
    began = time.perf_counter()
    app = step()
    seconds = time.perf_counter() - began
    if app.exception:
        raise RuntimeError(f"the viewer raised: {[e.value for e in app.exception]}")
    return app, seconds


def main(argv: list[str] | None = None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--pages", nargs="+", default=["Dataset", "Browse"])
    parser.add_argument("--pixel-stats", action="store_true", help="also time the Dataset page's pixel-share button")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    root = Path(args.data_root)
    images = {name: len(json.loads((root / name).read_text())["images"]) for name in ("train_all.json",)}
    sys.argv = [str(VIEWER), "--data-root", str(root)]
    rows: list[tuple[str, float]] = []
    for page in args.pages:
        app = AppTest.from_file(str(VIEWER), default_timeout=args.timeout)  # a fresh session and cold caches
        app.session_state["page"] = page
        app, cold = timed(app.run)
        app, warm = timed(app.run)
        rows += [(f"{page}: first render (cold)", cold), (f"{page}: rerun (warm)", warm)]
        if page == "Dataset" and args.pixel_stats:
            button = next((b for b in app.button if b.key == "pixel_button"), None)
            if button is not None:
                app, seconds = timed(button.click().run)
                rows.append(("Dataset: pixel share and mean colour (button)", seconds))
        st.cache_data.clear()
        st.cache_resource.clear()
    print(f"{datetime.date.today()}, {root} ({images['train_all.json']} images in train_all.json)")
    print("| step | seconds |")
    print("| --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    return rows


if __name__ == "__main__":
    main()
