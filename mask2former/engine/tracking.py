"""Experiment tracking beside metrics.csv and TensorBoard: Weights & Biases and MLflow, each switched on by its
TRACKING.*.ENABLED key, both optional extras (requirements-tracking.txt).

Each gets the run name (TRACKING.RUN_NAME, default OUTPUT_DIR's folder name), the whole config as flat parameters
(`MODEL.BACKBONE.NAME` ...) and every metric metrics.csv gets (losses, lr, sem_seg/mIoU ...), from the main process
only (Lightning's loggers log on global rank 0). W&B runs offline by default (OUTPUT_DIR/wandb; `wandb sync` uploads
it later), so nothing needs a network; MLflow writes a local file store (OUTPUT_DIR/mlruns; `mlflow ui
--backend-store-uri OUTPUT_DIR/mlruns` shows it) unless TRACKING.MLFLOW.TRACKING_URI names another. A resumed run
(--resume) continues the same W&B and MLflow runs: their ids are kept in OUTPUT_DIR/tracking.json.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import urllib.request
from pathlib import Path
from typing import Any

from fvcore.common.config import CfgNode
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger

from ..config import ConfigError
from ..io.files import atomic_write_json

logger = logging.getLogger(__name__)

RUN_IDS_FILE = "tracking.json"
WANDB_MODES = ("offline", "online")
INSTALL_HINT = "pip install -r requirements-tracking.txt"


def run_name(cfg: CfgNode) -> str:
    return cfg.TRACKING.RUN_NAME or Path(cfg.OUTPUT_DIR).resolve().name


def config_params(cfg: CfgNode, prefix: str = "") -> dict[str, Any]:
    """The config as {dotted key: value}, values JSON-safe (tuples as lists, anything else as its str)."""
    params: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            params.update(config_params(value, f"{prefix}{key}."))
            continue
        try:
            params[prefix + key] = json.loads(json.dumps(value))
        except TypeError:
            params[prefix + key] = str(value)
    return params


def saved_run_ids(output_dir: str) -> dict[str, str]:
    path = Path(output_dir) / RUN_IDS_FILE
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable ({error}); delete it to start new tracking runs") from None
    return {key: str(value) for key, value in saved.items() if key in ("wandb", "mlflow") and value}


def _require(module: str, key: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key} True needs the {module} package, not installed here: {INSTALL_HINT}")


def mlflow_uri(cfg: CfgNode) -> str:
    return cfg.TRACKING.MLFLOW.TRACKING_URI or (Path(cfg.OUTPUT_DIR).resolve() / "mlruns").as_uri()


def check_mlflow_server(uri: str, timeout_s: float = 5.0) -> None:
    """An http(s) tracking URI must answer MLflow's /health at once: MLflow itself retries for minutes, then fails
    inside the trainer's setup with a traceback."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"TRACKING.MLFLOW.TRACKING_URI {uri}: no MLflow server answers ({reason}); start it (`mlflow server`), "
            "or leave the key empty for the local file store OUTPUT_DIR/mlruns"
        ) from None


def build_tracking_loggers(cfg: CfgNode, resume: bool) -> list[Logger]:
    """The enabled trackers as Lightning loggers; `resume`: continue the runs recorded in OUTPUT_DIR."""
    node = cfg.TRACKING
    ids = saved_run_ids(cfg.OUTPUT_DIR) if resume else {}
    loggers: list[Logger] = []
    if node.WANDB.ENABLED:
        _require("wandb", "TRACKING.WANDB.ENABLED")
        if node.WANDB.MODE not in WANDB_MODES:
            raise ConfigError(f"TRACKING.WANDB.MODE {node.WANDB.MODE!r}: choose one of {', '.join(WANDB_MODES)}")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(
                name=run_name(cfg), project=node.WANDB.PROJECT, save_dir=cfg.OUTPUT_DIR,
                offline=node.WANDB.MODE == "offline", id=ids.get("wandb"), resume="allow" if "wandb" in ids else None,
            )
        )  # fmt: skip
    if node.MLFLOW.ENABLED:
        _require("mlflow", "TRACKING.MLFLOW.ENABLED")
        uri = mlflow_uri(cfg)
        check_mlflow_server(uri)
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked: this is the local store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(
            MLFlowLogger(
                experiment_name=node.MLFLOW.EXPERIMENT, run_name=run_name(cfg), tracking_uri=uri,
                run_id=ids.get("mlflow"),
            )
        )  # fmt: skip
    return loggers


def tracker_kind(tracker: Logger) -> str:
    """ "wandb" or "mlflow" (by class name: neither package is imported unless its tracker is enabled)."""
    return "wandb" if type(tracker).__name__ == "WandbLogger" else "mlflow"


def log_mlflow_params(tracker: Logger, params: dict[str, Any]) -> None:
    """The config as MLflow parameters. MLflow never changes a run's parameter, so in a resumed run whose config
    changed (a longer SOLVER.MAX_ITER, say) the first values stay and the new ones become tags `resumed.<KEY>`."""
    client, run_id = tracker.experiment, tracker.run_id
    logged = client.get_run(run_id).data.params
    tracker.log_hyperparams({key: value for key, value in params.items() if key not in logged})
    changed = {
        key: str(value)[:250] for key, value in params.items() if key in logged and logged[key] != str(value)[:250]
    }
    for key, value in changed.items():
        client.set_tag(run_id, f"resumed.{key}", value)
    if changed:
        logger.info(
            "tracking: MLflow keeps the run's first parameters; the changed ones are tags resumed.<key>: %s",
            ", ".join(f"{key} {logged[key]} -> {value}" for key, value in changed.items()),
        )


class TrackingRuns(Callback):
    """On the main process, at the start of training: the config to every tracker, and the trackers' run ids to
    OUTPUT_DIR/tracking.json (so that --resume continues the same runs)."""

    def __init__(self, cfg: CfgNode, loggers: list[Logger]) -> None:
        self.output_dir = cfg.OUTPUT_DIR
        self.params = config_params(cfg)
        self.loggers = loggers

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        ids = {}
        for tracker in self.loggers:
            kind = tracker_kind(tracker)
            if kind == "wandb":
                tracker.log_hyperparams(self.params)  # W&B updates a resumed run's config
                ids[kind] = str(tracker.version)
            else:
                log_mlflow_params(tracker, self.params)
                ids[kind] = str(tracker.run_id)
        atomic_write_json(Path(self.output_dir) / RUN_IDS_FILE, ids, indent=2)
        logger.info("tracking: %s", ", ".join(f"{kind} run {run_id}" for kind, run_id in ids.items()))


def finish_tracking(loggers: list[Logger]) -> None:
    """Close the W&B run this process opened (wandb keeps one run per process; a later training in the same
    process would otherwise log into it). MLflow's run is closed by Lightning at the end of fit."""
    for tracker in loggers:
        if tracker_kind(tracker) == "wandb" and getattr(tracker, "_experiment", None) is not None:
            tracker.experiment.finish()
