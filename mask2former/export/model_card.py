"""A model package's card (README.md): what the model predicts, what it was trained on and for how long, the val
mIoU this project measured, its input, its CPU speed measured at export, the licence of the weights it started
from and the command that made it.

Training facts come from the run folder when the weights are a run's `model_final.pth` (its config.yaml,
final_metrics.json, or eval_metrics.json of an --eval-only of these weights); otherwise the card says they are not
known here. A licence is what a weights file says about itself: a `license` entry of its safetensors metadata or of
its checkpoint dict, else the `license:` line of a Hugging Face card (README.md) or the first line of a LICENSE
file beside it; "unknown" when nothing says.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from fvcore.common.config import CfgNode

from ..errors import UserError
from ..inference.onnx_model import OUTPUT_NAME

UNKNOWN = "unknown"
_LICENCE_KEYS = ("license", "licence")


@dataclass
class Speed:
    """CPU images/s measured at export: at `size` (H, W) with `runtime`, on `cores` cores of `cpu`."""

    images_per_second: float
    size: tuple[int, int]
    runtime: str
    cores: int
    cpu: str


@dataclass
class RunFacts:
    """What a training run folder says about its model_final.pth."""

    folder: Path
    train: list[str] = field(default_factory=list)
    data_root: str = ""
    iterations: int | None = None
    miou: dict[str, float] = field(default_factory=dict)  # dataset -> val mIoU
    miou_source: str = ""
    started_from: dict[str, str] = field(default_factory=dict)  # MODEL.WEIGHTS / MODEL.BACKBONE.WEIGHTS -> path


@dataclass
class CardFacts:
    """Everything the card states."""

    cfg: CfgNode
    weights: Path
    class_names: list[str]
    palette: list[list[int]]
    metadata: dict[str, str]
    export: object  # onnx_file.ExportResult: max_abs_diff, images_checked, tolerance
    speed: Speed
    tensors: int
    command: str
    run: RunFacts | None
    licences: dict[str, str]  # how a starting weights file was named (MODEL.WEIGHTS ...) -> its licence
    config_name: str = ""  # the config file's name (e.g. quickstart.yaml), "" when not known


# ---- facts --------------------------------------------------------------------------------------------------------


def run_facts(weights: Path) -> RunFacts | None:
    """The run's facts when `weights` is a training run's model_final.pth (beside its config.yaml), else None."""
    folder = weights.expanduser().resolve().parent
    if weights.name != "model_final.pth" or not (folder / "config.yaml").is_file():
        return None
    from ..config import read_config_yaml

    config = read_config_yaml(str(folder / "config.yaml"))
    datasets, model = config.get("DATASETS", {}), config.get("MODEL", {})
    facts = RunFacts(folder, list(datasets.get("TRAIN", []) or []), str(datasets.get("ROOT", "") or ""))
    for key, value in (("MODEL.WEIGHTS", model.get("WEIGHTS")), ("MODEL.BACKBONE.WEIGHTS", _backbone_weights(model))):
        if value:
            facts.started_from[key] = str(value)
    final = _read_json(folder / "final_metrics.json")
    if final:
        facts.iterations = final.get("iteration")
        facts.miou, facts.miou_source = _mious(final), "final_metrics.json"
    evaluated = _read_json(folder / "eval_metrics.json")
    if not facts.miou and evaluated and _same_file(evaluated.get("weights"), weights):
        facts.miou, facts.miou_source = _mious(evaluated), "eval_metrics.json"
    return facts


def _backbone_weights(model: dict) -> str | None:
    backbone = model.get("BACKBONE", {})
    return backbone.get("WEIGHTS") if isinstance(backbone, dict) else None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _mious(metrics: dict) -> dict[str, float]:
    results = metrics.get("results") or {}
    return {
        name: float(result["mIoU"])
        for name, result in results.items()
        if isinstance(result, dict) and isinstance(result.get("mIoU"), (int, float))
    }


def _same_file(named: object, path: Path) -> bool:
    try:
        return isinstance(named, str) and Path(named).expanduser().resolve() == path.expanduser().resolve()
    except OSError:
        return False


def weights_licence(path: str | Path) -> str:
    """The licence a weights file states (see the module), "unknown" when nothing says."""
    path = Path(path).expanduser()
    if not path.is_file():
        return f"{UNKNOWN} ({path} is not on this machine)"
    return _stored_licence(path) or _licence_beside(path) or UNKNOWN


def _stored_licence(path: Path) -> str | None:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                found = handle.metadata() or {}
        except Exception:  # not a readable safetensors file: the loader names it when the weights are read  # noqa: BLE001
            return None
    else:
        from ..io.checkpoints import read_checkpoint_file

        try:
            found = read_checkpoint_file(path, allow_pickle=False, mmap=path.suffix in (".pth", ".pt", ".ckpt"))
        except (UserError, OSError, RuntimeError):
            return None
    if not isinstance(found, dict):
        return None
    return next((found[key].strip() for key in _LICENCE_KEYS if isinstance(found.get(key), str)), None) or None


def _licence_beside(path: Path) -> str | None:
    card = path.parent / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        front = re.match(r"---\n(.*?)\n---", text, re.S)
        line = front and re.search(r"^licen[cs]e:\s*(.+?)\s*$", front.group(1), re.M)
        if line:
            return line.group(1).strip("'\"")
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE"):
        licence = path.parent / name
        if licence.is_file():
            first = licence.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return f"{first[0].strip()} ({licence.name} beside the weights)" if first else None
    return None


def starting_weights(weights: Path, run: RunFacts | None) -> dict[str, str]:
    """The files the model started from, by how they were named: a run's MODEL.WEIGHTS / MODEL.BACKBONE.WEIGHTS
    (none: random weights), or the exported weights themselves when they are not a run's."""
    if run is not None:
        return dict(run.started_from)
    return {"--weights": str(weights)}


def starting_licences(weights: Path, run: RunFacts | None) -> dict[str, str]:
    """{how a starting weights file was named: its licence} (see `starting_weights`)."""
    return {key: weights_licence(path) for key, path in starting_weights(weights, run).items()}


def licence_identifier(licences: dict[str, str]) -> str:
    """One licence name for the card's front matter (Hugging Face's `license:`): the one licence stated, "other"
    when several differ or one is not a plain identifier, "unknown" when none is stated."""
    known = {value for value in licences.values() if not value.startswith(UNKNOWN)}
    if not known:
        return UNKNOWN
    only = known.pop()
    return only if not known and re.fullmatch(r"[\w.+-]+", only) else "other"


# ---- the card -----------------------------------------------------------------------------------------------------


def model_card(facts: CardFacts) -> str:
    """The README.md text of a package."""
    sections = [
        _front_matter(facts.licences),
        _title(facts),
        _classes(facts),
        _training(facts),
        _input(facts),
        _speed(facts),
        _licence(facts),
        _use(facts),
        _made_by(facts),
    ]
    return "\n\n".join(section.rstrip("\n") for section in sections) + "\n"


def _front_matter(licences: dict[str, str]) -> str:
    return (
        f"---\nlicense: {licence_identifier(licences)}\nlibrary_name: trash-seg\npipeline_tag: image-segmentation\n"
        "tags:\n- semantic-segmentation\n- onnx\n---"
    )


# the registered meta-architectures and backbones in words (others: their registered name)
ARCHITECTURE_WORDS = {"MaskFormer": "Mask2Former", "EoMT": "EoMT", "PerPixelSegmentor": "A per-pixel model"}
BACKBONE_WORDS = {
    "D2SwinTransformer": "a Swin Transformer",
    "D2DiNAT": "a DiNAT",
    "ViTPyramid": "a ViT with a feature pyramid",
    "TimmBackbone": "a timm",
    "build_resnet_backbone": "a ResNet",
}


def model_in_words(cfg: CfgNode) -> str:
    """'Mask2Former with a Swin Transformer backbone' from the config's meta-architecture and backbone names."""
    architecture = cfg.MODEL.META_ARCHITECTURE
    words = ARCHITECTURE_WORDS.get(architecture, architecture)
    if architecture == "EoMT":
        return f"{words} on {cfg.MODEL.EOMT.ENCODER_NAME}"
    backbone = cfg.MODEL.BACKBONE.NAME
    return f"{words} with {BACKBONE_WORDS.get(backbone, backbone)} backbone"


def _title(facts: CardFacts) -> str:
    config = f" (`{facts.config_name}`)" if facts.config_name else ""
    return (
        f"# {model_in_words(facts.cfg)}{config}: semantic segmentation into {len(facts.class_names)} classes\n\n"
        f"A model package written by `tools/export.py --package` on {time.strftime('%Y-%m-%d %H:%M %z')}. The "
        "folder is all a machine needs to predict, without the network:\n\n"
        "| file | what it holds |\n| --- | --- |\n"
        "| `model.onnx` | the whole inference path, from 0..255 pixels to class scores; its metadata hold "
        "the classes, colours, input size and config |\n"
        f"| `model.safetensors` | the PyTorch weights ({facts.tensors} tensors, the model's key names) |\n"
        "| `config.yaml` | the config the model is built from (weight paths cleared: the weights are here) |\n"
        "| `classes.json` | the class names and their colours |"
    )


def _classes(facts: CardFacts) -> str:
    rows = [
        f"| {index} | {name} | `#{r:02x}{g:02x}{b:02x}` |"
        for index, (name, (r, g, b)) in enumerate(zip(facts.class_names, facts.palette, strict=True))
    ]
    return "## Classes\n\n| index | class | colour |\n| --- | --- | --- |\n" + "\n".join(rows)


def _training(facts: CardFacts) -> str:
    run = facts.run
    if run is None:
        return (
            "## Training\n\n"
            f"- weights: `{facts.weights.name}`, not a training run's `model_final.pth`: the training data and "
            "iterations are not known here\n- val mIoU measured by this project: not measured"
        )
    data = ", ".join(f"`{name}`" for name in run.train) or "not recorded"
    iterations = run.iterations if run.iterations is not None else "not recorded (the run has no final_metrics.json)"
    if run.miou:
        shown = ", ".join(f"{value:.4f} on `{name}`" for name, value in run.miou.items())
        miou = f"{shown} (the run's {run.miou_source})"
    else:
        miou = "not measured"
    return (
        f"## Training\n\n- run: the folder `{run.folder.name}`\n- training data: {data} (DATASETS.ROOT "
        f"`{_shown_path(run.data_root)}`)\n"
        f"- iterations: {iterations}\n- val mIoU measured by this project: {miou}"
    )


def _input(facts: CardFacts) -> str:
    metadata = facts.metadata
    fixed = json.loads(metadata.get("input_size", "null"))
    if fixed:
        size = f"{fixed[0]} x {fixed[1]} (H x W, fixed)"
    else:
        size = (
            f"any (dynamic-size export; a photo's short side is resized to {metadata.get('min_size_test')}, "
            f"its long side at most {metadata.get('max_size_test')})"
        )
    return (
        f"## Input and output\n\n- input `image`: float32 [1, 3, H, W], 0..255, channels in "
        f"{metadata.get('input_format', 'RGB')} order (the normalisation is inside the model)\n"
        f"- input size: {size}\n- output `{OUTPUT_NAME}`: float32 [1, {len(facts.class_names)}, H, W], the class "
        "scores, not normalised: divide them by their sum over the classes for probabilities (as `Predictor` "
        "does; the argmax is the same)\n"
        f"- checked at export: onnxruntime against PyTorch, largest difference {_diff(facts.export)}"
    )


def _diff(export: object) -> str:
    difference = getattr(export, "max_abs_diff", None)
    if difference is None:
        return "not measured"
    return (
        f"{difference:.2e} over {getattr(export, 'images_checked', '?')} images "
        f"(tolerance {getattr(export, 'tolerance', '?')})"
    )


def _speed(facts: CardFacts) -> str:
    speed = facts.speed
    return (
        f"## Speed\n\n{speed.images_per_second:.2f} images/s at {speed.size[0]} x {speed.size[1]} on the CPU "
        f"({speed.runtime}, {speed.cores} cores, {speed.cpu}), measured at export on random images."
    )


def _licence(facts: CardFacts) -> str:
    if not facts.licences:
        return "## Licence\n\nThe model was trained from random weights: no licence was inherited from weights."
    paths = starting_weights(facts.weights, facts.run)
    rows = [f"- {key} `{_shown_path(paths[key])}`: {licence}" for key, licence in facts.licences.items()]
    return "## Licence\n\nThe licence field of the weights it started from:\n\n" + "\n".join(rows)


def _use(facts: CardFacts) -> str:
    return (
        "## Use\n\n```python\nfrom mask2former.inference.predictor import Predictor\n\n"
        'predictor = Predictor("THIS_FOLDER")\nprediction = predictor("photo.jpg")  # .labels: H x W class indices\n'
        "```\n\n```bash\npython tools/serve.py --package THIS_FOLDER  # POST /predict, GET /health on 127.0.0.1:8000\n"
        "```"
    )


def _made_by(facts: CardFacts) -> str:
    return f"## Made by\n\n```bash\n{facts.command}\n```\n\nfrom the weights `{facts.weights.name}`."


def _shown_path(path: str) -> str:
    """A path as the card shows it: relative paths as given, an absolute one (a place on the exporting machine,
    which config.yaml clears too) by its last two parts."""
    given = Path(path)
    return str(Path(*given.parts[-2:])) if given.is_absolute() and len(given.parts) > 2 else path
