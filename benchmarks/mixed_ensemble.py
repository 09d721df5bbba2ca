"""Mixed ensemble: a tiny Mask2Former, a tiny UPerNet and a tiny FPN trained at the demo's budget, each alone, their
soft vote, the DenseCRF and the final output (issue 15, step 5), on the sample data or on the real trashbag photos.

    # the generated sample data (make demo-data): train.json / val.json under datasets/sample
    python benchmarks/mixed_ensemble.py --data datasets/sample --out output/mixed_sample
    # the real photos: split by image into 5 folds, fold 0 is val
    python benchmarks/mixed_ensemble.py --data ../shared/data/trashbags --split-folds --out output/mixed_trashbags

Every step is one of the project's commands (train_net.py, tools/predict.py, tools/ensemble_crf.py,
tools/tune_crf.py), run in order and resumed where its outputs exist; the commands are printed. The last two print
the tables that benchmarks/RESULTS.md records: ensemble_crf.py's (each input, the vote, the CRF, the final output),
with ensemble_crf.py's defaults and with --consensus, and tune_crf.py's grid.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("quickstart.yaml", "quickstart_upernet.yaml", "quickstart_fpn.yaml")


def run(argv: list[str], env: dict[str, str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, env=env, cwd=REPO)


def dataset_opts(data: Path, out: Path, split_folds: bool, env: dict[str, str]) -> tuple[list[str], Path, Path]:
    """Config overrides that train on the data's train split and validate on its val split; (opts, train, val)."""
    if not split_folds:
        return ["DATASETS.ROOT", str(data)], data / "train.json", data / "val.json"
    folds = out / "folds"
    if not (folds / "val_fold0.json").exists():
        run([sys.executable, "tools/split_folds.py", "--json", str(data / "train_all.json"), "--folds", "5",
             "--out", str(folds)], env)  # fmt: skip
    train, val = folds / "train_fold0.json", folds / "val_fold0.json"
    register = f'[["mixed_train", "{train}", "{data}"], ["mixed_val", "{val}", "{data}"]]'
    opts = ["DATASETS.REGISTER", register, "DATASETS.TRAIN", '("mixed_train",)', "DATASETS.TEST", '("mixed_val",)']
    return opts, train, val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="data root (train.json/val.json or train_all.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split-folds", action="store_true", help="split train_all.json by image, fold 0 as val")
    parser.add_argument("--num-classes", type=int, default=None, help="MODEL.SEM_SEG_HEAD.NUM_CLASSES (with bg)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tta", action="store_true", help="predict with TTA (3 scales x flip, as RESULTS.md)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="more KEY VALUE overrides for every model")
    args = parser.parse_args()
    out = args.out.resolve()
    data = args.data.resolve()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    opts, _, val = dataset_opts(data, out, args.split_folds, env)
    if args.num_classes is not None:
        opts += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(args.num_classes)]
    opts += list(args.opts)
    tta = ["--tta", "TEST.AUG.MIN_SIZES", "(192, 256, 320)"] if args.tta else []
    predictions = []
    for config in MODELS:
        name = Path(config).stem
        run_dir = out / name
        config_path = f"configs/{config}"
        run([sys.executable, "train_net.py", "--config-file", config_path, "--resume", *opts,
             "OUTPUT_DIR", str(run_dir)], env)  # fmt: skip
        pred = out / f"pred_{name}"
        run([sys.executable, "tools/predict.py", "--config-file", config_path, "--weights",
             str(run_dir / "model_final.pth"), "--json", str(val), "--image-root", str(data), "--out", str(pred),
             "--threads",
             str(args.threads), *tta[:1], *opts, *tta[1:]], env)  # fmt: skip
        predictions.append(str(pred))
    for label, extra in (("crf", []), ("consensus", ["--consensus"])):
        run([sys.executable, "tools/ensemble_crf.py", *predictions, "--crf", *extra, "--gt", str(val),
             "--image-root", str(data),
             "--out", str(out / f"ensemble_{label}"), "--workers", str(args.threads)], env)  # fmt: skip
    tune_out = out / "tune_crf.txt"
    if not tune_out.exists():
        run([sys.executable, "tools/tune_crf.py", *predictions, "--gt", str(val), "--image-root", str(data),
             "--sxy", "5", "10", "20", "40",
             "--srgb", "3", "5", "13", "--compat", "3", "5", "10", "--workers", str(args.threads),
             "--out", str(tune_out)], env)  # fmt: skip


if __name__ == "__main__":
    main()
