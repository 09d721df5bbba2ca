"""The Python Predictor (mask2former/inference/predictor.py) over every source, the ONNX runtimes
(mask2former/inference/onnx_model.py), tools/predict.py --weights model.onnx, and --eval-only with TTA.

One tiny run (4 iterations on the generated sample data, views of 64 and 96 px) is trained and exported once
(dynamic size) for the whole file. What is compared, and how closely:
- PyTorch sources (a run folder, a config with weights) and input types (path, BGR array, PIL image): equal;
- an exported file against PyTorch: the file gives each view's unnormalised scores, resized to the output size
  and then normalised exactly as the PyTorch path does, so they differ only by the float rounding of another
  library (onnxruntime, OpenVINO), held to PROBABILITY_TOLERANCE; a pixel whose two best classes are that close on
  this near-uniform tiny model may change its label, at most LABEL_TOLERANCE of the pixels (on the trained demo
  model the exported file's CSV is PyTorch's byte for byte: benchmarks/RESULTS.md, issue 24);
- a package against its model.onnx: equal label maps (OpenVINO, another library, is held to the same tolerances
  as onnxruntime; here they differ in 1 CSV pixel);
- --eval-only with TTA counts exactly the Predictor's TTA label maps; tools/predict.py --tta stores the same
  probabilities as float16 (equal to the Predictor's rounded), so its mIoU matches to MIOU_TOLERANCE (argmax ties
  made by the rounding).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from conftest import REPO, doc_commands, doc_section, tiny_run_argv, tree_hashes
from PIL import Image

from mask2former.commands.predict import main as predict_main
from mask2former.config import load_config
from mask2former.data.coco_semantic import ground_truth_label_paths
from mask2former.engine.arguments import default_argument_parser
from mask2former.engine.launch import main as train_main
from mask2former.engine.launch import setup
from mask2former.engine.training import evaluate_only
from mask2former.evaluation.sem_seg import confusion_matrix, metrics_from_confusion
from mask2former.inference.onnx_model import METADATA_PREFIX, OnnxFileError, OnnxModel
from mask2former.inference.predictor import Predictor, PredictorError
from mask2former.io.images import read_label
from mask2former.io.probabilities import load_label_map, load_probabilities, probability_path
from mask2former.io.submission import read_submission
from mask2former.pipeline.ensemble_crf import EnsembleOptions
from mask2former.pipeline.ensemble_crf import run as run_ensemble
from mask2former.pipeline.pseudo_label import check_prediction_folder

VIEWS = ["TEST.AUG.MIN_SIZES", "(64, 96)"]  # with INPUT.MIN_SIZE_TEST 64 (tiny_training_opts)
PROBABILITY_TOLERANCE = 5e-4
LABEL_TOLERANCE = 1e-3  # share of pixels
MIOU_TOLERANCE = 1e-3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_folder(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run: OUTPUT_DIR with config.yaml and model_final.pth (recording the class names)."""
    output = tmp_path_factory.mktemp("predictor") / "run"
    train_main(tiny_run_argv(sample_root, output, *VIEWS, max_iter=4))
    return output


@pytest.fixture(scope="module")
def exported(run_folder: Path) -> Path:
    """The run's model exported (dynamic size) by mask2former/export/onnx_file.py."""
    from mask2former.export.onnx_file import export_onnx

    cfg = load_config(str(run_folder / "config.yaml"))
    out = run_folder.parent / "export" / "model.onnx"
    out.parent.mkdir()
    export_onnx(cfg, str(run_folder / "model_final.pth"), out, dynamic=True)
    return out


@pytest.fixture(scope="module")
def package(exported: Path, run_folder: Path) -> Path:
    """A minimal model package (the files Predictor reads): model.onnx, config.yaml, classes.json."""
    folder = exported.parent.parent / "package"
    folder.mkdir()
    shutil.copy(exported, folder / "model.onnx")
    shutil.copy(run_folder / "config.yaml", folder / "config.yaml")
    names = json.loads(OnnxModel(exported).metadata["class_names"])
    (folder / "classes.json").write_text(json.dumps({"class_names": names}))
    return folder


def val_images(sample_root: Path, count: int | None = None) -> list[Path]:
    data = json.loads((sample_root / "val.json").read_text())
    return [sample_root / image["file_name"] for image in data["images"][:count]]


@pytest.mark.slow
def test_every_source_gives_the_same_label_map(
    run_folder: Path, exported: Path, package: Path, sample_root: Path
) -> None:
    """A run folder, a config with a checkpoint, an .onnx file (onnxruntime and OpenVINO) and a package folder:
    the same label maps with and without TTA (exported files: within the tolerances of the module docstring); a
    path, a BGR array and a PIL image are the same photo."""
    reference = Predictor.from_run(run_folder)
    checkpoint = Predictor(run_folder / "config.yaml", run_folder / "model_final.pth")
    exported_forms = {
        "onnxruntime": Predictor(exported),
        "openvino": Predictor(exported, runtime="openvino"),
        "package": Predictor(package),
    }
    photo = val_images(sample_root, 1)[0]
    for tta in (False, True):
        expected = reference(photo, tta=tta)
        assert expected.probabilities.dtype == np.float32 and expected.labels.dtype == np.uint8
        assert expected.probabilities.shape == (11, *cv2.imread(str(photo)).shape[:2])
        np.testing.assert_allclose(expected.probabilities.sum(0), 1.0, atol=1e-5)
        assert expected.class_names == json.loads(exported_metadata(exported)["class_names"])
        assert np.array_equal(checkpoint(photo, tta=tta).probabilities, expected.probabilities)
        onnx_labels = exported_forms["onnxruntime"](photo, tta=tta).labels
        for name, predictor in exported_forms.items():
            got = predictor(photo, tta=tta)
            if name == "package":  # the same file with the same runtime
                assert np.array_equal(got.labels, onnx_labels), tta
            changed = float((got.labels != expected.labels).mean())
            assert changed <= LABEL_TOLERANCE, (name, tta, changed)
            difference = float(np.abs(got.probabilities - expected.probabilities).max())
            assert difference <= PROBABILITY_TOLERANCE, (name, tta, difference)
            assert got.class_names == expected.class_names
    plain, tta = reference(photo), reference(photo, tta=True)
    assert not np.array_equal(plain.probabilities, tta.probabilities)
    bgr = cv2.imread(str(photo))
    for image in (bgr, Image.open(photo)):
        assert np.array_equal(reference(image).probabilities, plain.probabilities)


def exported_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key.removeprefix(METADATA_PREFIX): p.value for p in model.metadata_props}


# ---- fast: a hand-made exported file (softmax of the pixels over 3 classes) ------------------------------------------


def hand_made_export(path: Path, input_size: list[int] | None = None) -> Path:
    """An .onnx file of this project's format whose "scores" are the softmax over channels of image / 100,
    with the metadata an export writes (its config: views of 32 px, TTA scales 32 and 48)."""
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("Div", ["image", "scale"], ["scaled"]),
            onnx.helper.make_node("Softmax", ["scaled"], ["scores"], axis=1),
        ],
        "softmax",
        [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, "height", "width"])],
        [onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1, 3, "height", "width"])],
        [onnx.numpy_helper.from_array(np.array(100.0, np.float32), "scale")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 9
    config = "INPUT:\n  MIN_SIZE_TEST: 32\nTEST:\n  AUG:\n    MIN_SIZES: [32, 48]\n    FLIP: true\n"
    metadata = {
        "format_version": "1",
        "class_names": json.dumps(["Background", "Paper", "Metal"]),
        "palette": json.dumps([[0, 0, 0], [255, 0, 0], [0, 255, 0]]),
        "input_size": json.dumps(input_size),
        "input_format": "RGB",
        "config": config,
    }
    onnx.helper.set_model_props(model, {METADATA_PREFIX + key: value for key, value in metadata.items()})
    onnx.save(model, str(path))
    return path


def softmax_rgb(bgr: np.ndarray) -> np.ndarray:
    rgb = bgr[:, :, ::-1].transpose(2, 0, 1).astype(np.float64) / 100
    exp = np.exp(rgb - rgb.max(0))
    return exp / exp.sum(0)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_model_and_predictor_on_a_hand_made_file(tmp_path: Path, runtime: str) -> None:
    """OnnxModel runs the file with both runtimes; the Predictor feeds it RGB views of the file's config (32 px)
    and resizes its probabilities bilinearly to the image, as the PyTorch model resizes its scores."""
    path = hand_made_export(tmp_path / "model.onnx")
    model = OnnxModel(path, runtime)
    assert model.class_names == ["Background", "Paper", "Metal"] and model.input_size is None
    bgr = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    chw = bgr[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(model.run(chw), softmax_rgb(bgr), atol=1e-6)
    predictor = Predictor(path, runtime=runtime)
    same_size = predictor(bgr)  # the view is the image: no resize
    np.testing.assert_allclose(same_size.probabilities, softmax_rgb(bgr), atol=1e-6)
    assert np.array_equal(same_size.labels, softmax_rgb(bgr).argmax(0))
    large = cv2.resize(bgr, (96, 64), interpolation=cv2.INTER_NEAREST)
    view = cv2.resize(large, (48, 32), interpolation=cv2.INTER_LINEAR)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(softmax_rgb(view)).float()[None], size=(64, 96), mode="bilinear", align_corners=False
    )[0].numpy()
    np.testing.assert_allclose(predictor(large).probabilities, resized, atol=1e-5)
    flipped = predictor(large, tta=True)  # scales 32 and 48, each flipped too
    assert flipped.probabilities.shape == (3, 64, 96) and flipped.labels.shape == (64, 96)
    assert not np.allclose(flipped.probabilities, predictor(large).probabilities)


def test_exported_file_refusals(tmp_path: Path) -> None:
    """A file without this project's metadata, an unknown runtime, weights beside an .onnx file, and a view of
    another size than a fixed-size export's: one line each, naming the file."""
    plain = hand_made_export(tmp_path / "plain.onnx")
    model = onnx.load(str(plain))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    fixed = hand_made_export(tmp_path / "fixed.onnx", input_size=[32, 48])
    cases = [
        (
            lambda: OnnxModel(plain),
            rf"^{plain}: no trashseg.format_version metadata: not a file tools/export\.py wrote",
        ),
        (lambda: OnnxModel(fixed, "tensorrt"), r"unknown runtime 'tensorrt': choose one of onnxruntime, openvino$"),
        (lambda: Predictor(fixed, weights="model.pth"), r"an exported model holds its weights: give no weights"),
        (lambda: OnnxModel(tmp_path / "missing.onnx"), r"missing\.onnx: no such \.onnx file$"),
    ]
    for make, pattern in cases:
        with pytest.raises((OnnxFileError, PredictorError)) as error:
            make()
        assert re.search(pattern, str(error.value)) and "\n" not in str(error.value), str(error.value)
    predictor = Predictor(fixed)
    photo = np.zeros((64, 96, 3), np.uint8)
    assert predictor(photo).labels.shape == (64, 96)  # its one view is 32 x 48: the file's size
    with pytest.raises(OnnxFileError) as error:
        predictor(photo, tta=True)  # a 48 x 72 view, refused before any view is predicted
    assert str(error.value) == (
        f"the image (96x64 pixels, width x height) makes a 72x48 view, and {fixed} is a fixed-size export that "
        "takes only 48x32 views: test-time augmentation makes views of several sizes: predict without it, or with "
        "a dynamic-size export (tools/export.py --dynamic-size)"
    )
    with pytest.raises(OnnxFileError) as error:
        OnnxModel(fixed).run(np.zeros((3, 48, 72), np.float32))  # the file itself never runs another size
    assert "a fixed-size export (32x48) was given a 48x72 view" in str(error.value)


def test_predictor_refuses_sources_and_images(tmp_path: Path) -> None:
    """Sources the Predictor cannot take and images it cannot read: one line each."""
    config = REPO / "configs" / "quickstart.yaml"
    cases = [
        (lambda: Predictor(config), r"a config file needs weights: Predictor\(config, weights\)$"),
        (lambda: Predictor(config, tmp_path / "w.pth"), r"w\.pth: checkpoint not found$"),
        (lambda: Predictor.from_run(tmp_path), r"no config\.yaml and no model_final\.pth: give a finished run"),
        (lambda: Predictor(tmp_path / "missing.yaml", "w.pth"), r"missing\.yaml: not found"),
    ]
    path = hand_made_export(tmp_path / "model.onnx")
    predictor = Predictor(path)
    cases += [
        (lambda: predictor(np.zeros((8, 8), np.uint8)), r"H x W x 3 uint8 pixels in BGR order"),
        (lambda: predictor(np.zeros((8, 8, 3), np.float32)), r"an array of float32"),
        (lambda: predictor(42), r"an image of type int: give a path, a PIL image or a BGR uint8 array$"),
    ]
    for make, pattern in cases:
        with pytest.raises(PredictorError) as error:
            make()
        assert re.search(pattern, str(error.value)) and "\n" not in str(error.value), str(error.value)


# ---- slow: a trained tiny run, its export, --eval-only and tools/predict.py ---------------------------------------


def eval_only(sample_root: Path, run_folder: Path, output: Path, tta: bool) -> dict:
    argv = tiny_run_argv(sample_root, output, *VIEWS, "MODEL.WEIGHTS", str(run_folder / "model_final.pth"))
    args = default_argument_parser().parse_args([*argv, "TEST.AUG.ENABLED", str(tta)])
    args.eval_only = True
    return evaluate_only(setup(args), args)["trash_val"]


@pytest.mark.slow
def test_eval_only_with_tta_is_predict_tta(run_folder: Path, sample_root: Path, tmp_path: Path) -> None:
    """--eval-only with TEST.AUG.ENABLED evaluates the TTA probabilities: another mIoU than without, the exact
    confusion matrix of the Predictor's TTA label maps, and tools/predict.py --tta's probabilities (float16)."""
    plain = eval_only(sample_root, run_folder, tmp_path / "plain", tta=False)
    with_tta = eval_only(sample_root, run_folder, tmp_path / "tta", tta=True)
    assert plain["mIoU"] != with_tta["mIoU"]

    predictor = Predictor.from_run(run_folder)
    labels, class_names = ground_truth_label_paths(sample_root / "val.json", sample_root, tmp_path / "cache")
    data = json.loads((sample_root / "val.json").read_text())
    out = tmp_path / "predicted"
    config, weights = str(run_folder / "config.yaml"), str(run_folder / "model_final.pth")
    argv = ["--config-file", config, "--weights", weights, "--json", str(sample_root / "val.json"), "--out", str(out)]
    assert predict_main([*argv, "--tta", "--prob-size", "0", "--overlays", "0", "--threads", "1"]) is not None
    hist = np.zeros((len(class_names),) * 2, np.int64)
    stored_hist = np.zeros_like(hist)
    for image in data["images"]:
        gt = read_label(labels[image["file_name"]])
        prediction = predictor(sample_root / image["file_name"], tta=True)
        hist += confusion_matrix(gt, prediction.labels, len(class_names))
        stored = probability_path(out, image["file_name"])
        rounded = prediction.probabilities.astype(np.float16).astype(np.float32)
        assert np.array_equal(load_probabilities(stored)["probs"], rounded)
        stored_hist += confusion_matrix(gt, load_label_map(stored), len(class_names))
    evaluated = json.loads((tmp_path / "tta" / "eval_only" / "trash_val" / "confusion_matrix.json").read_text())
    assert evaluated["matrix"] == hist.tolist()
    assert metrics_from_confusion(hist)["mIoU"] == pytest.approx(with_tta["mIoU"], abs=1e-12)
    assert metrics_from_confusion(stored_hist)["mIoU"] == pytest.approx(with_tta["mIoU"], abs=MIOU_TOLERANCE)


@pytest.mark.slow
def test_predict_with_onnx_weights_writes_pytorchs_csv(
    run_folder: Path, exported: Path, sample_root: Path, tmp_path: Path
) -> None:
    """tools/predict.py --weights model.onnx (no --config-file: the file carries it), with onnxruntime and with
    OpenVINO: the CSV of the PyTorch checkpoint (all but LABEL_TOLERANCE of its pixels, see the module docstring);
    meta.json names the runtime; no input changes."""
    inputs = tree_hashes(sample_root, exported.parent)
    common = ["--json", str(sample_root / "test.json"), "--overlays", "1", "--threads", "1"]
    torch_out, onnx_out, openvino_out = tmp_path / "torch", tmp_path / "onnx", tmp_path / "openvino"
    weights = str(run_folder / "model_final.pth")
    predict_main(
        ["--config-file", str(run_folder / "config.yaml"), "--weights", weights, "--out", str(torch_out), *common]
    )
    predict_main(["--weights", str(exported), "--out", str(onnx_out), *common])
    predict_main(["--weights", str(exported), "--runtime", "openvino", "--out", str(openvino_out), *common])
    expected = read_submission(torch_out / "submission.csv")
    for out, runtime in ((onnx_out, "onnxruntime"), (openvino_out, "openvino")):
        got = read_submission(out / "submission.csv")
        assert list(got) == list(expected)
        changed = sum(int((got[key] != expected[key]).sum()) for key in expected)
        assert changed <= LABEL_TOLERANCE * sum(label.size for label in expected.values()), (runtime, changed)
        meta = json.loads((out / "meta.json").read_text())
        assert meta["runtime"] == runtime and meta["config_file"] is None
        assert len(list((out / "overlays").rglob("*.png"))) == 1
    assert "runtime" not in json.loads((torch_out / "meta.json").read_text())
    assert tree_hashes(sample_root, exported.parent) == inputs
    # the ONNX prediction folders are the pipeline's input like PyTorch's: pseudo_label's --init-probs, ensemble_crf
    test_images = json.loads((sample_root / "test.json").read_text())["images"]
    class_names = json.loads((onnx_out / "meta.json").read_text())["class_names"]
    check_prediction_folder(onnx_out, test_images, class_names)
    ensemble = run_ensemble(EnsembleOptions(inputs=[str(torch_out), str(onnx_out)], out=str(tmp_path / "ensemble")))
    got = read_submission(tmp_path / "ensemble" / "submission.csv")
    changed = sum(int((got[key] != expected[key]).sum()) for key in expected)
    assert ensemble and changed <= LABEL_TOLERANCE * sum(label.size for label in expected.values())


@pytest.mark.slow
def test_predict_refuses_a_checkpoint_without_config(
    run_folder: Path, sample_root: Path, tmp_path: Path, capsys
) -> None:
    """--config-file stays required for PyTorch checkpoints: exit 2 with one line, nothing written."""
    argv = ["--weights", str(run_folder / "model_final.pth"), "--json", str(sample_root / "test.json")]
    with pytest.raises(SystemExit) as exit_info:
        predict_main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "predict.py: --config-file is required with PyTorch checkpoints (an exported .onnx file or a model package "
        "folder carries its own config): give the config the checkpoint was trained with (its run's config.yaml)"
    )
    assert not (tmp_path / "out").exists()


SECTION = "Runtimes and the Python Predictor"


def localised(text: str, exported: Path, sample_root: Path, output: Path) -> str:
    """The docs' paths made this test's: the dynamic-size output/export_any_size/model.onnx (`exported`), DATA,
    photo.jpg and output/. The docs' fixed-size output/export/model.onnx is kept for commands without TTA only."""
    photo = val_images(sample_root, 1)[0]
    if "output/export/model.onnx" in text:  # a Python block, or one argument of a command (checked by the test)
        assert "tta=True" not in text, "TTA needs the dynamic-size file (export_any_size)"
    text = text.replace("output/export_any_size/model.onnx", str(exported)).replace("photo.jpg", str(photo))
    text = text.replace("output/export/model.onnx", str(exported))
    return re.sub(r"(?<![\w/])DATA/", f"{sample_root}/", text).replace("output/", f"{output}/")


@pytest.mark.slow
def test_docs_python_example_runs(exported: Path, sample_root: Path, tmp_path: Path, capsys) -> None:
    """The Python block of docs/deployment.md's section, executed as written (paths made this test's)."""
    block = re.search(r"```python\n(.*?)```", doc_section(SECTION), re.S)
    assert block is not None
    exec(compile(localised(block.group(1), exported, sample_root, tmp_path), "deployment.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"\(512, 512\)", printed), printed


@pytest.mark.slow
def test_docs_commands_run(exported: Path, sample_root: Path, tmp_path: Path) -> None:
    """The bash block of the section: tools/predict.py --weights model.onnx commands, run in this process as
    tools/predict.py runs them (paths made this test's)."""

    commands = doc_commands(SECTION)
    assert commands and all(argv[:2] == ["python", "tools/predict.py"] for argv in commands)
    for argv in commands:
        assert "--tta" not in argv or "output/export/model.onnx" not in argv, "TTA needs the dynamic-size file"
        args = [localised(arg, exported, sample_root, tmp_path) for arg in argv[2:]]
        csv = predict_main([*args, "--threads", "1"])
        assert Path(csv).is_file()
