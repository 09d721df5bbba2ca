"""W&B (offline) and MLflow (local file store) as trackers of a tiny training run: run name, config and metrics
reach both, a resumed run continues the same runs, and a missing package or a bad mode is one clear error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import ConfigKeyCheck, CoveredBy, tiny_run_argv

from mask2former.config import ConfigError, get_cfg
from mask2former.engine import tracking
from mask2former.engine.arguments import default_argument_parser
from mask2former.engine.launch import setup
from mask2former.engine.training import train

pytest.importorskip("wandb", reason="requirements-tracking.txt (make test installs it)")
pytest.importorskip("mlflow", reason="requirements-tracking.txt (make test installs it)")

TRACKED = [
    "TRACKING.WANDB.ENABLED", "True", "TRACKING.MLFLOW.ENABLED", "True", "TRACKING.RUN_NAME", "tiny-run",
    "TRACKING.WANDB.PROJECT", "trash-test", "TRACKING.MLFLOW.EXPERIMENT", "trash-test",
]  # fmt: skip


def train_tiny(sample_root: Path, run: Path, max_iter: int, *flags: str) -> dict:
    argv = [*flags, *tiny_run_argv(sample_root, run, *TRACKED, max_iter=max_iter, period=2)]
    args = default_argument_parser().parse_args(argv)
    return train(setup(args), args)


def wandb_runs(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_both_trackers_get_the_name_config_and_metrics_and_a_resumed_run_continues_them(
    sample_root: Path, tmp_path: Path
) -> None:
    """TRACKING.WANDB.ENABLED and TRACKING.MLFLOW.ENABLED with RUN_NAME, WANDB.PROJECT and MLFLOW.EXPERIMENT."""
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    train_tiny(sample_root, run, 2)
    ids = json.loads((run / "tracking.json").read_text())
    assert set(ids) == {"wandb", "mlflow"}
    (first,) = wandb_runs(run)
    assert first.name.endswith(ids["wandb"])
    results = train_tiny(sample_root, run, 4, "--resume")
    assert json.loads((run / "tracking.json").read_text()) == ids  # the same runs, continued

    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    logged = client.get_run(ids["mlflow"])
    assert logged.info.run_name == "tiny-run"
    assert logged.data.params["MODEL.META_ARCHITECTURE"] == "MaskFormer"
    # MLflow never changes a parameter: the first run's value stays, the resumed run's is a tag
    assert logged.data.params["SOLVER.MAX_ITER"] == "2" and logged.data.tags["resumed.SOLVER.MAX_ITER"] == "4"
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "loss_ce")][-1] >= 3  # iterations 3-4 too
    miou = client.get_metric_history(ids["mlflow"], "sem_seg/mIoU")
    assert miou[-1].step >= 3 and miou[-1].value == pytest.approx(results["trash_val"]["mIoU"], rel=1e-6)

    runs = wandb_runs(run)
    assert len(runs) == 2 and all(path.name.endswith(ids["wandb"]) for path in runs)
    for path in runs:
        records = next(path.glob("run-*.wandb")).read_bytes()  # W&B's own record file, to be synced later
        for text in (b"tiny-run", b"trash-test", b"MODEL.META_ARCHITECTURE", b"loss_ce", b"sem_seg/mIoU"):
            assert text in records, (path.name, text)


def test_a_missing_package_or_a_bad_mode_is_one_error_naming_the_key(tmp_path: Path, monkeypatch) -> None:
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TRACKING.WANDB.MODE = "cloud"
    cfg.TRACKING.WANDB.ENABLED = True
    with pytest.raises(ConfigError, match="TRACKING.WANDB.MODE 'cloud'"):
        tracking.build_tracking_loggers(cfg, resume=False)
    cfg.TRACKING.WANDB.ENABLED = False
    cfg.TRACKING.MLFLOW.ENABLED = True
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(
        ConfigError, match="TRACKING.MLFLOW.ENABLED True needs the mlflow package.*requirements-tracking"
    ):
        tracking.build_tracking_loggers(cfg, resume=False)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    other = (tmp_path / "store").as_uri()
    cfg.TRACKING.MLFLOW.TRACKING_URI = other  # a server's URI or another store instead of OUTPUT_DIR/mlruns
    (mlflow_logger,) = tracking.build_tracking_loggers(cfg, resume=False)
    assert mlflow_logger._tracking_uri == other
    cfg.TRACKING.MLFLOW.TRACKING_URI = "http://127.0.0.1:9"  # nothing listens there: one line, not minutes of retries
    with pytest.raises(ConfigError, match=r"TRACKING.MLFLOW.TRACKING_URI http://127.0.0.1:9: no MLflow server answers"):
        tracking.build_tracking_loggers(cfg, resume=False)
    cfg.TRACKING.MLFLOW.ENABLED = False
    assert tracking.build_tracking_loggers(cfg, resume=False) == []


# ---- what each of the family's config keys does (tests/test_config_keys.py collects and runs these) -----------------

_KEYS_RUN = (
    "tests/test_tracking.py::test_both_trackers_get_the_name_config_and_metrics_and_a_resumed_run_continues_them"
)
_KEYS_ERRORS = "tests/test_tracking.py::test_a_missing_package_or_a_bad_mode_is_one_error_naming_the_key"

CONFIG_KEY_CHECKS: dict[str, ConfigKeyCheck] = {
    "TRACKING.RUN_NAME": CoveredBy(_KEYS_RUN),
    "TRACKING.WANDB.ENABLED": CoveredBy(_KEYS_RUN),
    "TRACKING.WANDB.PROJECT": CoveredBy(_KEYS_RUN),
    "TRACKING.WANDB.MODE": CoveredBy(_KEYS_ERRORS),
    "TRACKING.MLFLOW.ENABLED": CoveredBy(_KEYS_RUN),
    "TRACKING.MLFLOW.EXPERIMENT": CoveredBy(_KEYS_RUN),
    "TRACKING.MLFLOW.TRACKING_URI": CoveredBy(_KEYS_ERRORS),
}
