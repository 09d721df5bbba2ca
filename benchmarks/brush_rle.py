#!/usr/bin/env python
"""Label Studio brush RLE: the project's decoder and encoder (mask2former/data/formats/brush_rle.py) against
label-studio-converter's and label-studio-brush-rle-rs's, where those are importable (neither is a dependency:
install them in a scratch environment to compare).

    python benchmarks/brush_rle.py [--height 1080 --width 1920] [--runs 3]

Two layers of one mask (a disc and a bar): "grey", every RGBA byte the alpha (as label-studio-converter writes
brush layers), and "coloured", a brush colour in RGB and alpha 255 (short runs: the worst case). Each code is
decoded by every implementation and checked equal; prints the code size and the best time of --runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mask2former.data.formats.brush_rle import decode_brush_rle, encode_brush_rle  # noqa: E402


def implementations() -> dict:
    found = {"project (numpy)": (lambda words: encode_brush_rle(words), decode_brush_rle)}
    try:
        from label_studio_converter import brush

        found["label-studio-converter"] = (lambda w: bytes(brush.encode_rle(w)), lambda c: brush.decode_rle(c))
    except ImportError:
        pass
    try:
        import label_studio_brush_rle_rs as rs

        found["label-studio-brush-rle-rs"] = (
            lambda w: bytes(rs.encode_rle(w, 8, [3, 4, 8, 16])),
            lambda c: rs.decode_rle(list(c), False),
        )
    except ImportError:
        pass
    return found


def layers(height: int, width: int) -> dict[str, np.ndarray]:
    rows, cols = np.mgrid[:height, :width]
    mask = (rows - height / 2) ** 2 + (cols - width / 2) ** 2 < (height / 3) ** 2
    mask |= (cols > width // 20) & (cols < width // 6) & (rows > height // 10) & (rows < height * 8 // 10)
    coloured = np.zeros((height, width, 4), np.uint8)
    coloured[mask] = (30, 144, 255, 255)
    return {"grey": np.repeat(mask.ravel().astype(np.uint8) * 255, 4), "coloured": coloured.ravel()}


def best(call, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    found = implementations()
    print(f"| layer ({args.width}x{args.height}) | implementation | code bytes | encode s | decode s |")
    print("| --- | --- | --- | --- | --- |")
    for name, words in layers(args.height, args.width).items():
        for label, (encode, decode) in found.items():
            encode_s, code = best(lambda encode=encode, words=words: encode(words), args.runs)
            decode_s, back = best(lambda decode=decode, code=code: decode(code), args.runs)
            assert np.array_equal(np.asarray(back, dtype=np.uint8), words), label
            assert np.array_equal(decode_brush_rle(code), words), f"the project cannot read {label}'s code"
            print(f"| {name} | {label} | {len(code)} | {encode_s:.3f} | {decode_s:.3f} |")


if __name__ == "__main__":
    main()
