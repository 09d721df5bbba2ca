"""The training loop on PyTorch Lightning: one step you can read top to bottom.

`MaskFormerModule` owns the model, its optimizer and LR schedule, the data loaders (an endless,
resumable sampler for training; contiguous shards without padding for evaluation) and the
evaluators. Checkpoints carry the merged config as YAML text and the RNG states, nothing pickled.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader

from ..config import ConfigError, config_yaml
from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.coco_semantic import check_class_lists, set_class_metadata
from ..data.dataset import MapDataset
from ..data.mapper import SemanticSegMapper
from ..data.samplers import InfiniteSampler
from ..errors import UserError
from ..evaluation.sem_seg import SemSegEvaluator
from ..io.checkpoints import first_non_finite
from ..modeling.build import build_model
from .optimizer import build_gradient_clipper, build_lr_scheduler, build_optimizer

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: a loss, the model's outputs or its weights became NaN or Inf; the message names the
    iteration, the losses and the last good checkpoint."""


class ShardSampler(torch.utils.data.Sampler):
    """Rank r of w gets the r-th contiguous slice of range(size): every item exactly once, no padding."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        per_rank = -(-size // world_size)
        self.indices = list(range(min(size, rank * per_rank), min(size, (rank + 1) * per_rank)))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def check_dataset_classes(cfg: CfgNode, names: list[str]) -> list[str]:
    """The class names shared by the datasets (names of DATASETS.TRAIN and TEST); ClassListError naming both jsons
    when two differ (in count or in names: a val json with swapped names would score one class against another),
    ConfigError if they disagree with MODEL.SEM_SEG_HEAD.NUM_CLASSES."""
    class_names = None
    for name in names:
        classes = set_class_metadata(name)
        if class_names is not None:
            check_class_lists(
                classes,
                f"dataset {name} ({_json_of(name)})",
                class_names,
                f"dataset {names[0]} ({_json_of(names[0])})",
                "list datasets of one class list together (the same categories, ids and names)",
            )
        class_names = classes
    if class_names is not None and len(class_names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        raise ConfigError(
            f"dataset {names[0]} has {len(class_names)} classes (background included: {class_names}) but "
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}: set it to {len(class_names)}"
        )
    return class_names or []


def _json_of(name: str) -> str:
    return str(MetadataCatalog.get(name).get("json_file") or "no json")


class MaskFormerModule(L.LightningModule):
    def __init__(self, cfg: CfgNode, batch_size_per_device: int = 1, eval_folder: str = "eval") -> None:
        super().__init__()
        self.cfg = cfg.clone()
        self.batch_size_per_device = batch_size_per_device
        self.eval_folder = eval_folder  # OUTPUT_DIR/<eval_folder>/<dataset>/: the evaluators' files
        self.model = build_model(cfg)
        self.gradient_clipper = build_gradient_clipper(cfg)
        self.evaluators: list[SemSegEvaluator] = []
        self.last_results: dict[str, dict] = {}
        self.last_eval_step = -1
        self.tta = False  # evaluate over the TEST.AUG views (--eval-only with TEST.AUG.ENABLED)
        self._last_losses: tuple[int, dict[str, torch.Tensor]] | None = None
        self._last_logged: tuple[int, dict[str, torch.Tensor]] | None = None
        # Diverged outputs are caught before the matcher sees them (its assignment solver refuses NaN costs with
        # a bare ValueError that names nothing).
        self.model.criterion.register_forward_pre_hook(self._check_outputs_finite)

    # ---- data ----------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        cfg = self.cfg
        dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
        check_dataset_classes(cfg, list(cfg.DATASETS.TRAIN))
        rank, world = self._rank_world()
        start = self.trainer.global_step * self.batch_size_per_device * world  # resumes the sample stream
        dataset = MapDataset(dicts, SemanticSegMapper.from_config(cfg, is_train=True), seed=cfg.SEED)
        sampler = InfiniteSampler(len(dicts), seed=cfg.SEED, start=start, rank=rank, world_size=world)
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            sampler=sampler,
            collate_fn=list,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,
            drop_last=True,
            generator=_loader_generator(cfg.SEED + rank),
        )

    def val_dataloader(self) -> list[DataLoader]:
        cfg = self.cfg
        rank, world = self._rank_world()
        class_names = check_dataset_classes(cfg, list(cfg.DATASETS.TEST))
        mapper = SemanticSegMapper.from_config(cfg, is_train=False)
        loaders, self.evaluators = [], []
        for name in cfg.DATASETS.TEST:
            dicts = DatasetCatalog.get(name)
            if any("sem_seg_file_name" not in d for d in dicts):
                raise ConfigError(f"dataset {name} in DATASETS.TEST has no ground truth; evaluate on a labelled split")
            loaders.append(
                DataLoader(
                    MapDataset(dicts, mapper),
                    batch_size=1,
                    collate_fn=list,
                    sampler=ShardSampler(len(dicts), rank, world),
                    num_workers=min(2, cfg.DATALOADER.NUM_WORKERS),
                    generator=_loader_generator(cfg.SEED),
                )
            )
            meta = MetadataCatalog.get(name)
            self.evaluators.append(
                SemSegEvaluator(
                    class_names,
                    ignore_label=meta.ignore_label,
                    output_dir=f"{cfg.OUTPUT_DIR}/{self.eval_folder}/{name}" if rank == 0 else None,
                    log_table=False,
                )
            )
        return loaders

    # ---- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: list[dict], batch_idx: int) -> torch.Tensor:
        set_iteration = getattr(self.model, "set_iteration", None)
        if set_iteration is not None:  # a schedule inside the model (EoMT's mask annealing) follows the iteration
            set_iteration(self.global_step)
        try:
            losses = self.model(batch)
        except ValueError as error:
            if "invalid numeric entries" not in str(error):  # scipy's refusal of a NaN/Inf cost matrix
                raise
            raise self._diverged("the matcher's costs hold NaN or Inf") from None
        total = self.model.criterion.weighted_total(losses)
        if not torch.isfinite(total):
            readable = {key: round(float(value.detach()), 4) for key, value in losses.items()}
            raise NonFiniteLossError(
                f"loss became {float(total.detach())} at iteration {self.global_step}; losses: {readable}. "
                f"{self._checkpoint_left()} {_ADVICE}"
            )
        self._last_losses = (self.global_step, {key: value.detach() for key, value in losses.items()})
        shown = self.model.criterion.logged_losses
        logged = {key: value.detach() for key, value in losses.items() if key in shown}
        logged["total_loss"] = total.detach()
        logged["lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"]) if self._trainer else torch.tensor(0.0)
        # several processes: the mean over ranks, which is the loss of the whole global batch (the criterion's
        # normalisers are global), so metrics.csv reads the same whatever the process count
        self.log_dict(logged, batch_size=len(batch), sync_dist=self._rank_world()[1] > 1)
        # the row's step is the iteration this one completes (1-based), as log.txt's "iter N/M" counts it
        self.log("step", float(self.global_step + 1), batch_size=len(batch))
        self._last_logged = (self.global_step + 1, logged)
        return total

    def _check_outputs_finite(self, criterion: torch.nn.Module, args: tuple) -> None:
        tensors = list(_tensors_in(args[0]))  # the model's outputs: MaskFormer's queries, or per-pixel logits
        if not bool(torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all()):
            raise self._diverged("the model's outputs hold NaN or Inf")

    def _diverged(self, what: str) -> NonFiniteLossError:
        if self._last_losses is not None:
            step, values = self._last_losses
            readable = {key: round(float(value), 4) for key, value in values.items()}
            before = f"losses at iteration {step}: {readable}"
        else:
            before = "no finite loss before it in this run"
        return NonFiniteLossError(
            f"loss became non-finite at iteration {self.global_step} ({what}, so no loss can be computed); "
            f"{before}. {self._checkpoint_left()} {_ADVICE}"
        )

    def _checkpoint_left(self) -> str:
        last = Path(self.cfg.OUTPUT_DIR) / "checkpoints" / "last.ckpt"
        if last.is_file():
            return f"The last good checkpoint stays: {last}."
        return f"No checkpoint was saved before it (none in {last.parent})."

    def on_validation_epoch_start(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def validation_step(self, batch: list[dict], batch_idx: int, dataloader_idx: int = 0) -> None:
        outputs = self._tta_outputs(batch) if self.tta else self.model(batch)
        self.evaluators[dataloader_idx].process(batch, outputs)

    def _tta_outputs(self, batch: list[dict]) -> list[dict]:
        """The batch's probabilities over the TEST.AUG views of each image file, made by inference/tta.py as
        tools/predict.py --tta makes them (at the image's size, one view per forward pass)."""
        from ..inference.tta import inference_max_size, inference_views, predict_batch
        from ..io.images import read_image

        images = [read_image(item["file_name"]) for item in batch]
        views, max_size = inference_views(self.cfg), inference_max_size(self.cfg)
        amp = torch.is_autocast_enabled(self.device.type)  # bf16-mixed precision: its autocast, as without TTA
        probs = predict_batch(self.model, images, views, max_size, self.cfg.INPUT.FORMAT, amp=amp)
        return [{"sem_seg": p} for p in probs]

    def on_validation_epoch_end(self) -> None:
        self.last_results = {}
        for name, evaluator in zip(self.cfg.DATASETS.TEST, self.evaluators, strict=True):
            result = evaluator.evaluate()["sem_seg"]
            self.last_results[name] = result
            if self.global_rank == 0:
                # --eval-only evaluates MODEL.WEIGHTS (its trainer never trained: global_step 0)
                what = f"iteration {self.global_step}" if self.global_step else f"weights {self.cfg.MODEL.WEIGHTS}"
                logger.info("%s, %s: mIoU %.4f\n%s", what, name, result["mIoU"], evaluator.table)
        if self.last_results:
            first = self.last_results[self.cfg.DATASETS.TEST[0]]
            # the same on every rank (the evaluators sum their confusion matrices): the mean over ranks is exact
            several = self._rank_world()[1] > 1
            self.log("sem_seg/mIoU", first["mIoU"], sync_dist=several, rank_zero_only=False)
            for name, result in list(self.last_results.items())[1:]:  # the first dataset's is sem_seg/mIoU
                self.log(f"{name}/mIoU", result["mIoU"], sync_dist=several)
            # the iterations done, as log.txt and final_metrics.json say
            self.log("step", float(self.global_step), sync_dist=several)
        self.last_eval_step = self.global_step

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.cfg, self.model)
        scheduler = build_lr_scheduler(self.cfg, optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        # SOLVER.CLIP_GRADIENTS (Lightning's own clipping knows neither NORM_TYPE nor per-parameter norms); Lightning
        # calls this after the backward pass (gradients all-reduced, unscaled) and before optimizer.step
        if self.gradient_clipper is not None:
            self.gradient_clipper(param for group in optimizer.param_groups for param in group["params"])

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = first_non_finite(checkpoint["state_dict"])
        if bad:  # never replace a good checkpoint with a diverged one
            raise NonFiniteLossError(
                f"the weights became non-finite after iteration {self.global_step} ({bad}); not saved. "
                f"{self._checkpoint_left()} {_ADVICE}"
            )
        checkpoint["config_yaml"] = config_yaml(self.cfg)
        checkpoint["class_names"] = check_dataset_classes(self.cfg, list(self.cfg.DATASETS.TRAIN))
        row = self._pending_metrics_row()
        if row is not None:
            checkpoint["metrics_row"] = row
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": _python_state_to_plain(random.getstate()),
        }

    def _pending_metrics_row(self) -> dict | None:
        """The metrics.csv row of the iteration this checkpoint ends, when that iteration logs one: Lightning hands
        it to the loggers only after the checkpoint is saved, so a kill in between would lose it; `--resume` writes
        it from here."""
        trainer = self._trainer
        if trainer is None or self._last_logged is None or self._last_logged[0] != self.global_step:
            return None
        if self.global_step % max(1, trainer.log_every_n_steps):
            return None
        step, logged = self._last_logged
        return {"step": step, **{key: float(value) for key, value in logged.items()}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            np.random.set_state(_numpy_state_from_plain(states["numpy"]))
            random.setstate(_python_state_from_plain(states["python"]))


def _tensors_in(value: object):
    """Every floating-point tensor in nested dicts / lists / tuples."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors_in(item)


_ADVICE = "Lower SOLVER.BASE_LR (or enable SOLVER.CLIP_GRADIENTS) and train again."


def _loader_generator(seed: int) -> torch.Generator:
    # A loader's own generator: starting its iterator then draws nothing from the global RNG, which the
    # model's random sampling uses, so a resumed run draws the same numbers as an uninterrupted one.
    return torch.Generator().manual_seed(seed)


# RNG states as tensors / lists so checkpoints load with weights_only=True.
def _numpy_state_to_plain(state: tuple) -> dict:
    return {
        "name": state[0],
        "keys": torch.from_numpy(state[1].astype(np.int64)),
        "pos": int(state[2]),
        "has_gauss": int(state[3]),
        "cached_gaussian": float(state[4]),
    }


def _numpy_state_from_plain(plain: dict) -> tuple:
    return (
        plain["name"],
        plain["keys"].numpy().astype(np.uint32),
        plain["pos"],
        plain["has_gauss"],
        plain["cached_gaussian"],
    )


def _python_state_to_plain(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _python_state_from_plain(plain: list) -> tuple:
    return (plain[0], tuple(plain[1]), plain[2])
