"""Config: defaults, _BASE_ inheritance, type-checked overrides, unknown keys with close matches."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from mask2former.config import (
    NO_EFFECT,
    ONLY_DEFAULT,
    CfgNode,
    ConfigError,
    config_yaml,
    flatten_keys,
    get_cfg,
    load_config,
)
from mask2former.engine.arguments import default_argument_parser
from mask2former.engine.run_config import build_config


def test_defaults_use_mask2former_key_names() -> None:
    cfg = get_cfg()
    keys = set(flatten_keys(cfg))
    for key in (
        "INPUT.MIN_SIZE_TRAIN",
        "INPUT.MAX_SIZE_TRAIN",
        "INPUT.CROP.SIZE",
        "INPUT.COLOR_AUG_SSD",
        "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA",
        "INPUT.DATASET_MAPPER_NAME",
        "DATASETS.TRAIN",
        "DATASETS.TEST",
        "DATALOADER.NUM_WORKERS",
        "OUTPUT_DIR",
        "SEED",
    ):
        assert key in keys
    assert cfg.INPUT.MIN_SIZE_TRAIN[0] == 256 and cfg.INPUT.MIN_SIZE_TRAIN[-1] == 1024


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("INPUT:\n  CROP:\n    SIZE: (384, 384)\n  MIN_SIZE_TEST: 256\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nINPUT:\n  MIN_SIZE_TEST: 640\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "child.yaml"))
    assert tuple(cfg.INPUT.CROP.SIZE) == (384, 384)
    assert cfg.INPUT.MIN_SIZE_TEST == 640
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "512", "DATASETS.TRAIN", "('a', 'b')"])
    assert cfg.INPUT.MIN_SIZE_TEST == 512 and cfg.DATASETS.TRAIN == ("a", "b")


def test_unknown_key_in_file_lists_close_matches(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("INPUT:\n  MIN_SIZE_TESTS: 640\n")
    with pytest.raises(KeyError, match=r"unknown config key 'INPUT.MIN_SIZE_TESTS'.*bad.yaml.*INPUT.MIN_SIZE_TEST"):
        get_cfg().merge_from_file(str(tmp_path / "bad.yaml"))


def test_unknown_key_on_command_line_lists_close_matches() -> None:
    with pytest.raises(KeyError, match=r"'INPUT.CROP.SIZES'.*command line.*INPUT.CROP.SIZE"):
        get_cfg().merge_from_list(["INPUT.CROP.SIZES", "(256, 256)"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        get_cfg().merge_from_list(["SEED"])


def test_override_types_are_checked() -> None:
    with pytest.raises(ValueError):
        get_cfg().merge_from_list(["INPUT.MIN_SIZE_TEST", "'large'"])


# ---- the official configs' eval tag, read without running code -------------------------------------------------

EVAL_LINE = 'MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 640) for x in range(5, 21)]"]'
SIZES_640 = (320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024, 1088, 1152, 1216, 1280)


@pytest.fixture
def no_code_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's eval and yaml's unsafe loaders fail the test if anything calls them."""
    import builtins

    def refuse(*args, **kwargs):
        raise AssertionError("a config file was read with code execution")

    monkeypatch.setattr(builtins, "eval", refuse)
    for name in ("unsafe_load", "full_load", "load"):
        monkeypatch.setattr(yaml, name, refuse)


def write_official_like(folder: Path) -> Path:
    """A base in the official files' form (the eval tag, FILTER_EMPTY_ANNOTATIONS) and a child naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Base-Like.yaml").write_text(
        "INPUT:\n"
        f"  {EVAL_LINE}\n"
        '  MIN_SIZE_TRAIN_SAMPLING: "choice"\n'
        "  CROP:\n"
        "    SIZE: (640, 640)\n"
        "  SIZE_DIVISIBILITY: 640  # used in dataset mapper\n"
        "DATALOADER:\n"
        "  FILTER_EMPTY_ANNOTATIONS: True\n"
        "  NUM_WORKERS: 4\n"
        "VERSION: 2\n"
    )
    (folder / "sub").mkdir(exist_ok=True)
    child = folder / "sub" / "model_like.yaml"
    child.write_text("_BASE_: ../Base-Like.yaml\nMODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSES: 150\n")
    return child


def test_official_eval_tag_loads_without_running_code(tmp_path: Path, no_code_runs: None) -> None:
    child = write_official_like(tmp_path)
    cfg = get_cfg()
    cfg.merge_from_file(str(child))
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == SIZES_640
    assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is True and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150
    loaded = load_config(str(child))
    assert tuple(loaded.INPUT.MIN_SIZE_TRAIN) == SIZES_640 and loaded.INPUT.SIZE_DIVISIBILITY == 640
    again = get_cfg()
    again.merge_from_file(str(child), allow_unsafe=True)  # fvcore's flag: the safe loader all the same
    assert tuple(again.INPUT.MIN_SIZE_TRAIN) == SIZES_640


def test_train_net_config_file_takes_the_eval_tag(tmp_path: Path, no_code_runs: None) -> None:
    child = write_official_like(tmp_path)
    args = default_argument_parser().parse_args(
        ["--config-file", str(child), "--num-gpus", "0", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"]
    )
    cfg = build_config(args)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == SIZES_640 and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False


def test_the_project_base_writes_the_train_sizes_as_the_official_files_do() -> None:
    base = REPO / "configs" / "Base-Trash-SemanticSegmentation.yaml"
    assert "!!python/object/apply:eval" in base.read_text()
    cfg = load_config(str(base))
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (
        256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024
    )  # fmt: skip
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(get_cfg().INPUT.MIN_SIZE_TRAIN)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("[int(x * 0.1 * 512) for x in range(5, 21)]", [int(x * 0.1 * 512) for x in range(5, 21)]),
        ("[x * 32 for x in range(8, 33, 4) if x % 8 == 0]", [256, 512, 768, 1024]),
        ("[s * 2 for s in [256, 384, -1]]", [512, 768, -2]),
        ("(512, 512)", (512, 512)),
        ("-2 ** 3 + 7 // 2 - 7 % 4 + 1 / 4", -(2**3) + 7 // 2 - 7 % 4 + 1 / 4),
        ("range(3)", [0, 1, 2]),
        ("[[y for y in range(x)] for x in range(3)]", [[], [0], [0, 1]]),
    ],
)
def test_eval_tag_admits_arithmetic_ranges_and_comprehensions(tmp_path: Path, expression: str, value) -> None:
    from mask2former.utils.safe_eval import safe_eval

    assert safe_eval(expression) == value
    (tmp_path / "c.yaml").write_text(f"TEST:\n  AUG:\n    MIN_SIZES: !!python/object/apply:eval ['{expression}']\n")
    if isinstance(value, list | tuple) and all(isinstance(v, int) for v in value):
        assert list(load_config(str(tmp_path / "c.yaml")).TEST.AUG.MIN_SIZES) == list(value)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        (
            "__import__('os').system('touch {marker}')",
            r"the call '__import__\(.*not allowed \(only range\(\) and int\(\)\)",
        ),
        ("open('{marker}', 'w')", r"the call 'open\(.*not allowed"),
        ("(1).__class__", r"Attribute .*not allowed"),
        ("[x for x in ().__class__.__mro__]", r"Attribute .*not allowed"),
        ("lambda: 1", r"Lambda .*not allowed"),
        ("size", r"the name 'size' is not allowed"),
        ("'abc' * 3", r"the literal 'abc' is not allowed"),
        ("range(10 ** 6)", r"has 1000000 items \(at most 10000\)"),
        ("9 ** 9 ** 9", r"the power .* is too large"),
        ("[x for x in range(3) for y in range(3)]", r"only one 'for' per comprehension"),
        ("1 / 0", r"division by zero"),
        ("[int(x * 0.1 * 512) for x in range(5, 21)", r"not a Python expression"),
    ],
)
def test_eval_tag_refuses_everything_else_naming_file_and_line(
    tmp_path: Path, expression: str, reason: str, no_code_runs: None
) -> None:
    marker = tmp_path / "ran"
    expression = expression.format(marker=marker)
    base = tmp_path / "base.yaml"
    quoted = expression.replace('"', '\\"')
    base.write_text(
        f'# a comment\nINPUT:\n  MIN_SIZE_TEST: 512\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["{quoted}"]\n'
    )
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\n")
    for reader in (
        lambda: get_cfg().merge_from_file(str(tmp_path / "child.yaml")),
        lambda: load_config(str(tmp_path / "child.yaml")),
    ):
        with pytest.raises(ConfigError) as error:
            reader()
        message = str(error.value)
        assert message.startswith(f"{base}, line 4: !!python/object/apply:eval"), message
        assert re.search(reason, message), message
        assert "without running code" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    [
        '!!python/object/apply:os.system ["touch {marker}"]',
        "!!python/name:os.system",
        "!!python/object/new:collections.OrderedDict []",
        "!!python/tuple [1, 2]",
        '!!python/object/apply:builtins.eval ["1"]',
    ],
)
def test_other_python_tags_are_refused_naming_file_line_and_tag(tmp_path: Path, value: str, no_code_runs: None) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "bad.yaml"
    path.write_text(f"INPUT:\n  MIN_SIZE_TEST: {value.format(marker=marker)}\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    tag = value.split()[0][len("!!python/") :]
    assert str(error.value).startswith(f"{path}, line 2: the YAML tag !!python/{tag} is not allowed"), error.value
    assert not marker.exists()


def test_eval_tag_takes_one_quoted_expression(tmp_path: Path) -> None:
    for value, expected in (
        ('!!python/object/apply:eval ["1", "2"]', "one quoted expression in brackets"),
        ("!!python/object/apply:eval [5]", "takes a quoted expression, got 5"),
        ("!!python/object/apply:eval {args: ['1']}", "one quoted expression in brackets"),
    ):
        (tmp_path / "c.yaml").write_text(f"SEED:\n  {value}\n")
        with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'c.yaml'}, line 2: ") + ".*" + expected):
            load_config(str(tmp_path / "c.yaml"))


def test_base_chains_lists_loops_and_missing_bases(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("INPUT:\n  MIN_SIZE_TEST: 100\n  MAX_SIZE_TEST: 1000\n")
    (tmp_path / "b.yaml").write_text("INPUT:\n  MIN_SIZE_TEST: 200\nSEED: 5\n")
    (tmp_path / "child.yaml").write_text("_BASE_: [a.yaml, b.yaml]\nSEED: 6\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.SEED) == (200, 1000, 6)  # later bases win

    (tmp_path / "loop1.yaml").write_text("_BASE_: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("_BASE_: loop1.yaml\n")
    with pytest.raises(ConfigError, match=r"loop1.yaml: its _BASE_ chain comes back to itself"):
        load_config(str(tmp_path / "loop1.yaml"))

    (tmp_path / "orphan.yaml").write_text("_BASE_: gone/base.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*gone/base.yaml \(the _BASE_ of .*orphan.yaml\)"):
        load_config(str(tmp_path / "orphan.yaml"))

    (tmp_path / "remote.yaml").write_text("_BASE_: https://example.com/base.yaml\n")
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        load_config(str(tmp_path / "remote.yaml"))

    (tmp_path / "group.yaml").write_text("SEED: 1\n")
    (tmp_path / "regroup.yaml").write_text("_BASE_: group.yaml\nSEED:\n  X: 1\n")
    with pytest.raises(ConfigError, match=r"regroup.yaml: SEED is a group of keys here but a value in its _BASE_"):
        load_config(str(tmp_path / "regroup.yaml"))


def test_yaml_errors_and_odd_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(str(tmp_path / "empty.yaml")).SEED == get_cfg().SEED
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: a config file holds KEY: value lines, got a list"):
        load_config(str(tmp_path / "list.yaml"))
    (tmp_path / "broken.yaml").write_text("INPUT:\n  MIN_SIZE_TEST: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml, line \d+: not valid YAML"):
        load_config(str(tmp_path / "broken.yaml"))
    (tmp_path / "tagged.yaml").write_text("SEED: !custom 3\n")
    with pytest.raises(ConfigError, match=r"tagged.yaml, line 1: not valid YAML: could not determine a constructor"):
        load_config(str(tmp_path / "tagged.yaml"))


def test_only_default_keys_name_the_key_and_why() -> None:
    with pytest.raises(ConfigError, match=r"VERSION is 1: only 2 is supported \(detectron2's version-1 configs"):
        load_config(None, ["VERSION", "1"])
    with pytest.raises(ConfigError, match=r"MODEL.MASK_FORMER.TEST.PANOPTIC_ON is True: only False"):
        load_config(None, ["MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True"])


def test_a_runs_config_yaml_leaves_out_the_compatibility_keys_unless_set() -> None:
    """config_yaml: the keys kept only for official files are left out at their one value (and
    FILTER_EMPTY_ANNOTATIONS at its default); a set value shows; loading the file gives the same config."""
    cfg = load_config(None, ["SOLVER.MAX_ITER", "7"])
    written = yaml.safe_load(config_yaml(cfg))
    shown = set(flatten_keys(CfgNode(written)))
    assert not shown & (set(ONLY_DEFAULT) | set(NO_EFFECT)), shown & (set(ONLY_DEFAULT) | set(NO_EFFECT))
    assert shown == set(flatten_keys(cfg)) - set(ONLY_DEFAULT) - set(NO_EFFECT)
    assert len(shown) > 150
    assert written["SOLVER"]["MAX_ITER"] == 7
    unset = load_config(None, ["DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"])
    assert yaml.safe_load(config_yaml(unset))["DATALOADER"]["FILTER_EMPTY_ANNOTATIONS"] is False
    assert yaml.safe_load(config_yaml(cfg)) == yaml.safe_load(config_yaml(load_config(None, ["SOLVER.MAX_ITER", "7"])))


def test_every_compatibility_key_is_refused_at_another_value_naming_why() -> None:
    for key, (allowed, reason) in ONLY_DEFAULT.items():
        other = "'another'" if isinstance(allowed, str) else repr(not allowed if isinstance(allowed, bool) else 3)
        with pytest.raises(ConfigError, match=re.escape(f"{key} is ") + r".*" + re.escape(f"({reason})")):
            load_config(None, [key, other])


def test_whole_numbers_and_inf_are_taken_for_float_keys(tmp_path) -> None:
    """`CLIP_VALUE 0` as people type it (not 0.0), and `inf` for a max-norm, on the command line and in a file."""
    cfg = load_config(
        None, ["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1", "SOLVER.CLIP_GRADIENTS.NORM_TYPE", "inf", "SOLVER.BASE_LR", "2"]
    )
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 1.0 and isinstance(cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE, float)
    assert math.isinf(cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE) and cfg.SOLVER.BASE_LR == 2.0
    path = tmp_path / "ints.yaml"
    path.write_text("SOLVER:\n  WEIGHT_DECAY: 0\n  CLIP_GRADIENTS:\n    NORM_TYPE: .inf\n")
    cfg = load_config(str(path))
    assert isinstance(cfg.SOLVER.WEIGHT_DECAY, float) and cfg.SOLVER.WEIGHT_DECAY == 0.0
    assert math.isinf(cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE)
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR"):
        load_config(None, ["SOLVER.BASE_LR", "fast"])


def test_load_config_takes_values_between_the_file_and_the_opts() -> None:
    cfg = load_config(None, ["INPUT.MIN_SIZE_TEST", "96"], values={"INPUT": {"MIN_SIZE_TEST": 64, "FORMAT": "RGB"}})
    assert cfg.INPUT.MIN_SIZE_TEST == 96 and cfg.INPUT.FORMAT == "RGB"
    with pytest.raises(ConfigError, match="INPUT.NOPE"):
        load_config(None, values={"INPUT": {"NOPE": 1}})
