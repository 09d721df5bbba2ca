"""The data and prediction viewer (tools/viewer.py) through Streamlit's AppTest, and its plain functions.

Every page runs on the generated sample dataset; the numbers it shows are checked against the json
and against mask2former's own statistics and evaluator on the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("streamlit")

import streamlit as st  # noqa: E402
from conftest import REPO, TinyPackage, doc_commands, tree_hashes  # noqa: E402
from streamlit import config as st_config  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from mask2former.data.coco_semantic import load_with_manifest  # noqa: E402
from mask2former.data.stats import dataset_statistics  # noqa: E402
from mask2former.evaluation.sem_seg import SemSegEvaluator, confusion_matrix, metrics_from_confusion  # noqa: E402
from mask2former.inference.predictor import Predictor  # noqa: E402
from mask2former.io.coco_json import read_coco_json
from mask2former.io.images import ImageTooLargeError, NotAnImageError, read_image, read_label  # noqa: E402
from mask2former.io.probabilities import load_probabilities, probability_path, save_probabilities  # noqa: E402
from mask2former.io.submission import downsample_label_map, read_submission, write_submission  # noqa: E402
from mask2former.viewer import app as viewer_app  # noqa: E402
from mask2former.viewer.arguments import (  # noqa: E402
    ViewerArgumentError,
    bind_problem,
    check_arguments,
    is_loopback,
    model_sources,
)
from mask2former.viewer.compare import FolderPredictions, compare, discover_prediction_sets  # noqa: E402
from mask2former.viewer.data import filter_images, label_map, load_index  # noqa: E402
from mask2former.viewer.launch import streamlit_command  # noqa: E402
from mask2former.viewer.model import (  # noqa: E402
    class_shares,
    data_root_images,
    image_scores,
    load_predictor,
    predict_photo,
    read_upload,
)
from mask2former.viewer.paths import PathOutsideRoots, Roots, list_files  # noqa: E402
from mask2former.viewer.stats import SIZE_BINS, size_bins  # noqa: E402

VIEWER = Path(__file__).resolve().parents[1] / "tools" / "viewer.py"
TIMEOUT = 60  # seconds for one script run (the first one imports torch)


# ---- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def bound_to_localhost():
    """AppTest has no server; pretend it was started as the launcher starts it (127.0.0.1)."""
    previous = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")
    yield
    st_config.set_option("server.address", previous)


def _corrupt(label: np.ndarray, seed: int, num_classes: int) -> np.ndarray:
    """A plausible wrong prediction: a square of a random class and a shift of a few pixels."""
    rng = np.random.default_rng(seed)
    label = label.copy()
    y, x = rng.integers(0, label.shape[0] - 40), rng.integers(0, label.shape[1] - 40)
    label[y : y + 40, x : x + 40] = rng.integers(0, num_classes)
    return np.roll(label, 1 + seed % 4, axis=1)


@pytest.fixture(scope="module")
def predictions(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """For val.json: a submission CSV and a prediction folder; for test.json: two CSVs; GT from the project."""
    out = tmp_path_factory.mktemp("predictions")
    cache = tmp_path_factory.mktemp("label_cache")
    dicts, manifest = load_with_manifest(sample_root / "val.json", sample_root, cache, progress=False)
    class_names = manifest["class_names"]
    k = len(class_names)
    rows = []
    for i, record in enumerate(dicts):
        gt = read_label(record["sem_seg_file_name"])
        name = Path(record["file_name"]).relative_to(sample_root.resolve()).as_posix()
        rows.append((name, _corrupt(downsample_label_map(gt), i, k)))
        probs = np.eye(k, dtype=np.float32)[downsample_label_map(_corrupt(gt, i + 7, k))].transpose(2, 0, 1)
        save_probabilities(
            out / "run1", name, record["image_id"], probs, record["height"], record["width"], class_names
        )
    write_submission(out / "val.csv", rows)
    rng = np.random.default_rng(0)
    first, second = [], []
    for image in read_coco_json(sample_root / "test.json")["images"]:
        label = rng.integers(0, k, (256, 256)).astype(np.uint8)
        first.append((image["file_name"], label))
        second.append((image["file_name"], np.where(rng.random((256, 256)) < 0.7, label, 0).astype(np.uint8)))
    write_submission(out / "test_a.csv", first)
    write_submission(out / "test_b.csv", second)
    return {"dir": out, "cache": cache, "dicts": dicts, "class_names": class_names}


def run_viewer(monkeypatch: pytest.MonkeyPatch, *args: str | Path, page: str | None = None) -> AppTest:
    monkeypatch.setattr(sys, "argv", [str(VIEWER), *map(str, args)])
    app = AppTest.from_file(str(VIEWER), default_timeout=TIMEOUT).run()
    if page is not None:
        app.sidebar.radio(key="page").set_value(page).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha1 of every file under `folder` (symlinks by their target's content)."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha1(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def by_label(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def select_by_text(widget, text: str) -> None:
    widget.select_index(widget.options.index(text))


def table_with(app: AppTest, column: str):
    return next(t.value for t in app.table if column in t.value.columns)


def shown_metric(app: AppTest, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


# ---- plain functions ----------------------------------------------------------------------------------


def test_roots_refuse_paths_outside_symlinks_included(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"x")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"x")
    (root / "leak.jpg").symlink_to(secret)
    (root / "alias.jpg").symlink_to(root / "images" / "a.jpg")
    (root / "outside_dir").symlink_to(tmp_path, target_is_directory=True)
    csv = tmp_path / "sub.csv"
    csv.write_text("x")
    roots = Roots.from_paths([root, csv])

    assert roots.check(root / "images" / "a.jpg") == (root / "images" / "a.jpg").resolve()
    assert roots.join(root, "images/a.jpg").name == "a.jpg"
    assert roots.check(root / "alias.jpg").name == "a.jpg"  # a symlink that stays inside is fine
    assert roots.check(csv) == csv.resolve()
    for bad in (root / "leak.jpg", root / "outside_dir" / "secret.jpg", root / ".." / "secret.jpg", secret):
        with pytest.raises(PathOutsideRoots, match="outside the folders the viewer was given"):
            roots.check(bad)
    with pytest.raises(PathOutsideRoots, match="resolves to"):
        roots.check(root / "leak.jpg")
    for relative in ("../secret.jpg", "images/../../secret.jpg", str(secret)):
        with pytest.raises(PathOutsideRoots):
            roots.join(root, relative)
    with pytest.raises(PathOutsideRoots):
        roots.check(tmp_path / "other.csv")  # a file root admits only itself
    with pytest.raises(FileNotFoundError):
        Roots.from_paths([tmp_path / "missing"])
    assert Roots.from_key(roots.key()) == roots


def test_list_files_leaves_out_links_leading_outside(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "folds").mkdir(parents=True)
    (root / "train.json").write_text("{}")
    (root / "folds" / "val_fold0.json").write_text("{}")
    (root / ".hidden.json").write_text("{}")
    (tmp_path / "elsewhere.json").write_text("{}")
    (root / "link.json").symlink_to(tmp_path / "elsewhere.json")
    found = [p.relative_to(root).as_posix() for p in list_files(Roots.from_paths([root]), root, ".json")]
    assert found == ["folds/val_fold0.json", "train.json"]


def test_bind_check_and_launcher_command() -> None:
    for address in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        assert is_loopback(address) and bind_problem(address) is None
    for address in (None, "", "0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(address)
        assert "only serves localhost" in bind_problem(address)
    command = streamlit_command("tools/viewer.py", ["--data-root", "d"], port=9000)
    joined = " ".join(command)
    assert "-m streamlit run tools/viewer.py" in joined
    assert "--server.address 127.0.0.1" in joined and "--server.headless true" in joined
    assert "--server.port 9000" in joined and command[-3:] == ["--", "--data-root", "d"]


def test_plain_streamlit_run_from_the_repository_binds_localhost() -> None:
    import tomllib

    settings = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert is_loopback(settings["server"]["address"]) and settings["browser"]["gatherUsageStats"] is False


def test_size_bins_and_filters(sample_root: Path) -> None:
    assert list(size_bins(np.array([0.0, 0.0009, 0.001, 0.3, 0.5, 1.0, 1.2]))) == [2, 1, 0, 0, 0, 0, 1, 3]
    assert len(SIZE_BINS) == 8
    index = load_index(sample_root / "train_all.json", sample_root)
    data = read_coco_json(sample_root / "train_all.json")
    battery = {a["image_id"] for a in data["annotations"] if a["category_id"] == 9}
    assert set(filter_images(index, [9])) == battery
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert set(filter_images(index, [], 0, 5)) == {i["id"] for i in data["images"] if per_image[i["id"]] <= 5}


def test_prediction_sets_are_discovered(predictions: dict) -> None:
    out = predictions["dir"]
    sets = discover_prediction_sets(Roots.from_paths([out]), [out])
    assert {(s.kind, s.path.name) for s in sets} == {
        ("folder", "run1"),
        ("csv", "val.csv"),
        ("csv", "test_a.csv"),
        ("csv", "test_b.csv"),
    }


def test_compare_skips_a_broken_prediction_file(tmp_path: Path, sample_root: Path, predictions: dict) -> None:
    folder = tmp_path / "run"
    shutil.copytree(predictions["dir"] / "run1", folder)
    index = load_index(sample_root / "val.json", sample_root)
    broken = probability_path(folder, index.images[0]["file_name"])
    broken.write_bytes(broken.read_bytes()[:100])
    roots = Roots.from_paths([sample_root, folder])
    result = compare(index, [FolderPredictions(folder, roots)], ["run"], lambda i: label_map(index, i))
    assert result.num_images == len(index.images) - 1
    assert len(result.errors) == 1 and index.images[0]["file_name"] in result.errors[0]
    assert len(result.per_image) == result.num_images and result.tags == ["A"]


# ---- the app ------------------------------------------------------------------------------------------


def test_dataset_page_counts_equal_the_json(monkeypatch, sample_root: Path, predictions: dict) -> None:
    app = run_viewer(monkeypatch, "--data-root", sample_root)
    assert app.selectbox(key="dataset_json").value == "train_all.json"
    data = read_coco_json(sample_root / "train_all.json")
    names = {c["id"]: c["name"] for c in data["categories"]}
    objects = Counter(names[a["category_id"]] for a in data["annotations"])
    images = defaultdict(set)
    for a in data["annotations"]:
        images[names[a["category_id"]]].add(a["image_id"])

    classes = table_with(app, "objects")
    assert list(classes["class"]) == [names[i] for i in sorted(names)]
    assert dict(zip(classes["class"], classes["objects"], strict=True)) == {n: objects[n] for n in names.values()}
    assert dict(zip(classes["class"], classes["images"], strict=True)) == {n: len(images[n]) for n in names.values()}
    assert shown_metric(app, "images") == str(len(data["images"]))
    assert shown_metric(app, "objects") == str(len(data["annotations"]))

    # pixel shares: equal to the project's statistics over its cached label maps
    dicts, manifest = load_with_manifest(sample_root / "train_all.json", sample_root, predictions["cache"])
    expected = dataset_statistics(data, dicts, manifest["class_names"])
    pixels = table_with(app, "pixel %")
    assert list(pixels["pixel %"]) == [round(100 * c["pixel_share"], 3) for c in expected["classes"]]
    assert pixels["mean colour"].str.match(r"^#[0-9a-f]{6}$").all()
    per_image = next(d.value for d in app.dataframe if "objects" in d.value.columns and "images" in d.value.columns)
    assert per_image["images"].sum() == len(data["images"])
    sizes = next(d.value for d in app.dataframe if "median %" in d.value.columns)
    assert dict(zip(sizes["class"], sizes[list(SIZE_BINS)].sum(axis=1), strict=True)) == {
        n: objects[n] for n in names.values()
    }


def test_browse_page_shows_images_and_filters(monkeypatch, sample_root: Path) -> None:
    app = run_viewer(monkeypatch, "--data-root", sample_root, page="Browse")
    data = read_coco_json(sample_root / "train_all.json")
    tiles = [image for image in app.image if image.captions and " objects" in image.captions[0]]
    assert len(tiles) == min(12, len(data["images"]))
    assert tiles[0].captions[0].startswith(data["images"][0]["file_name"])
    assert all(image.value[0] for image in tiles)  # each has a media URL
    assert any(image.captions == ["ground truth overlay"] for image in app.image)  # the large view
    assert not app.error

    by_label(app.multiselect, "Contains every class").set_value(["Battery"]).run()
    battery = {a["image_id"] for a in data["annotations"] if a["category_id"] == 9}
    assert any(m.value.startswith(f"**{len(battery)}** of {len(data['images'])}") for m in app.markdown)
    by_label(app.checkbox, "Paper").uncheck()
    by_label(app.slider, "Overlay opacity").set_value(0.8).run()
    tiles = [image for image in app.image if image.captions and " objects" in image.captions[0]]
    assert len(tiles) == min(12, len(battery)) and not app.exception


def _evaluator_result(predictions: dict, root: Path, labels_by_name: dict) -> dict:
    """SemSegEvaluator over the val ground truth (nearest-reduced to 256) against {file_name: label}."""
    evaluator = SemSegEvaluator(predictions["class_names"], log_table=False)
    for record in predictions["dicts"]:
        name = Path(record["file_name"]).relative_to(root.resolve()).as_posix()
        pred = labels_by_name[name]
        evaluator.add(downsample_label_map(read_label(record["sem_seg_file_name"]), pred.shape[0]), pred)
    return evaluator.evaluate()["sem_seg"]


def test_predictions_page_iou_equals_the_evaluator(monkeypatch, sample_root: Path, predictions: dict) -> None:
    out = predictions["dir"]
    app = run_viewer(monkeypatch, "--data-root", sample_root, "--pred", out / "val.csv", out, page="Predictions")
    assert app.selectbox(key="predictions_json").value == "val.json"
    select_by_text(app.selectbox(key="pred_a"), str(out / "val.csv"))
    app.run()
    select_by_text(app.selectbox(key="pred_b"), f"{out / 'run1'} (probabilities)")
    app.run()
    assert not app.exception and not app.error

    csv = _evaluator_result(predictions, sample_root, read_submission(out / "val.csv"))
    folder_labels = {}
    for record in predictions["dicts"]:
        name = Path(record["file_name"]).relative_to(sample_root.resolve()).as_posix()
        folder_labels[name] = load_probabilities(probability_path(out / "run1", name))["probs"].argmax(axis=0)
    folder = _evaluator_result(predictions, sample_root, folder_labels)

    assert shown_metric(app, "mIoU A") == f"{csv['mIoU']:.4f}"
    assert shown_metric(app, "mIoU B") == f"{folder['mIoU']:.4f}"
    assert shown_metric(app, "pixel acc A") == f"{csv['pACC']:.4f}"
    table = table_with(app, "IoU A")
    for name, iou_a, iou_b in zip(table["class"], table["IoU A"], table["IoU B"], strict=True):
        assert iou_a == pytest.approx(round(csv[f"IoU-{name}"], 4), abs=1e-12)
        assert iou_b == pytest.approx(round(folder[f"IoU-{name}"], 4), abs=1e-12)

    per_image = next(d.value for d in app.dataframe if "mIoU A" in d.value.columns)
    assert len(per_image) == len(predictions["dicts"])
    assert list(per_image["mIoU A"]) == sorted(per_image["mIoU A"])  # worst first
    worst = per_image.iloc[0]
    record = next(d for d in predictions["dicts"] if d["file_name"].endswith(worst["file_name"]))
    gt = downsample_label_map(read_label(record["sem_seg_file_name"]))
    pred = read_submission(out / "val.csv")[worst["file_name"]]
    hist = confusion_matrix(gt, pred, len(predictions["class_names"]))
    assert worst["mIoU A"] == pytest.approx(metrics_from_confusion(hist)["mIoU"])
    side = [image for image in app.image if image.captions and image.captions[0].startswith("prediction")]
    assert len(side) >= 4  # A, A's differences, B, B's differences
    assert app.selectbox(key="pred_image").value == worst["file_name"]


def test_predictions_page_compares_two_sets_without_ground_truth(monkeypatch, sample_root, predictions) -> None:
    out = predictions["dir"]
    app = run_viewer(monkeypatch, "--data-root", sample_root, "--pred", out, page="Predictions")
    app.selectbox(key="predictions_json").set_value("test.json").run()
    select_by_text(app.selectbox(key="pred_a"), str(out / "test_a.csv"))
    app.run()
    assert any("no ground truth" in info.value for info in app.info)
    select_by_text(app.selectbox(key="pred_b"), str(out / "test_b.csv"))
    app.run()
    assert not app.exception and not app.error
    first, second = read_submission(out / "test_a.csv"), read_submission(out / "test_b.csv")
    hist = sum(confusion_matrix(first[name], second[name], len(predictions["class_names"])) for name in first)
    assert shown_metric(app, "mIoU B") == f"{metrics_from_confusion(hist)['mIoU']:.4f}"
    assert "A px" in table_with(app, "IoU B").columns


def test_augmentations_page_renders_mapper_draws(monkeypatch, sample_root: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    app = run_viewer(monkeypatch, "--data-root", sample_root, "--config-file", config, page="Augmentations")
    by_label(app.slider, "Draws").set_value(3).run()
    draws = [image for image in app.image if image.captions and image.captions[0].startswith("draw ")]
    assert [image.captions[0].split(":")[0] for image in draws] == ["draw 0", "draw 1", "draw 2"]
    assert any(image.captions[0].startswith("original") for image in app.image if image.captions)
    app.selectbox(key="augment_config").select_index(1).run()
    assert not app.exception and not app.error
    assert len([i for i in app.image if i.captions and i.captions[0].startswith("draw ")]) == 3

    # copy-paste (INPUT.COPY_PASTE.*) comes with the mapper: switched on, its object bank is this json's
    pasting = next(c for c in app.checkbox if c.label.startswith("Copy-paste"))
    pasting.check().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert len([i for i in app.image if i.captions and i.captions[0].startswith("draw ")]) == 3
    assert any("INPUT.COPY_PASTE.ENABLED: True" in code.value for code in app.code)


def test_viewer_refuses_files_outside_its_roots(monkeypatch, tmp_path: Path, sample_root: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    picture = np.full((32, 48, 3), 200, dtype=np.uint8)
    cv2.imwrite(str(root / "images" / "ok.jpg"), picture)
    cv2.imwrite(str(tmp_path / "secret.jpg"), picture)
    (root / "images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    categories = [{"id": 1, "name": "Paper"}]
    images = [
        {"id": 1, "file_name": "images/ok.jpg", "height": 32, "width": 48},
        {"id": 3, "file_name": "images/link.jpg", "height": 32, "width": 48},
    ]
    (root / "train_all.json").write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    climbing = [*images, {"id": 2, "file_name": "../secret.jpg", "height": 32, "width": 48}]
    (root / "climbs.json").write_text(json.dumps({"images": climbing, "annotations": [], "categories": categories}))

    app = run_viewer(monkeypatch, "--data-root", root, page="Browse")
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "outside the folders the viewer was given" in errors[0] and "link.jpg" in errors[0]
    tiles = [image for image in app.image if image.captions and " objects" in image.captions[0]]
    assert [t.captions[0].split(" ")[0] for t in tiles] == ["images/ok.jpg"]

    # a json whose file_name climbs out with '..' is refused whole by the json reader, naming the json and image
    app.selectbox(key="browse_json").set_value("climbs.json").run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "Cannot open climbs.json" in errors[0] and "'../secret.jpg'" in errors[0]
    assert not [image for image in app.image if image.captions and " objects" in image.captions[0]]

    # --pred beside the data root: a symlink inside it that leads out is not offered either
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.csv").write_text("image_id,PredictionString\n")
    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "x.csv").symlink_to(elsewhere / "x.csv")
    app = run_viewer(monkeypatch, "--data-root", root, "--pred", preds, page="Predictions")
    assert any("No prediction set" in info.value for info in app.info)


def test_predictions_page_refuses_a_probability_file_with_nan(monkeypatch, tmp_path, sample_root, predictions) -> None:
    folder = tmp_path / "run"
    shutil.copytree(predictions["dir"] / "run1", folder)
    index = load_index(sample_root / "val.json", sample_root)
    broken = probability_path(folder, index.images[0]["file_name"])
    record = load_probabilities(broken)
    probs = record.pop("probs").astype(np.float16)
    probs[:, 10, 20] = np.nan
    with broken.open("wb") as handle:  # written by hand: save_probabilities refuses NaN
        np.savez_compressed(handle, probs=probs, **{k: np.array(v) for k, v in record.items()})
    inputs = tree_digest(folder), tree_digest(sample_root)

    app = run_viewer(monkeypatch, "--data-root", sample_root, "--pred", folder, page="Predictions")
    assert app.selectbox(key="pred_a").value == 0 and app.selectbox(key="predictions_json").value == "val.json"
    errors = [e.value for e in app.error]
    assert len(errors) == 1, errors
    assert str(broken) in errors[0] and "NaN" in errors[0] and "Traceback" not in errors[0]
    assert "\n" not in errors[0]  # one line
    scored = next(m.value for m in app.markdown if "scored against" in m.value)
    assert f"over **{len(index.images) - 1}** image(s)" in scored  # the broken file's image is left out
    per_image = next(d.value for d in app.dataframe if "mIoU A" in d.value.columns)
    assert index.images[0]["file_name"] not in set(per_image["file_name"])
    assert (tree_digest(folder), tree_digest(sample_root)) == inputs


def test_viewer_writes_only_into_its_scratch_folder(monkeypatch, tmp_path, sample_root, predictions) -> None:
    temp, work = tmp_path / "tmp", tmp_path / "cwd"
    temp.mkdir()
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where scratch_folder() makes its folder
    monkeypatch.chdir(work)
    st.cache_data.clear()  # draw everything again: label PNGs, the copy-paste bank, the confusion plot
    st.cache_resource.clear()
    config = REPO / "configs" / "quickstart.yaml"
    out = predictions["dir"]
    inputs = tree_digest(sample_root), tree_digest(out), config.read_bytes()

    app = run_viewer(
        monkeypatch, "--data-root", sample_root, "--pred", out, "--config-file", config, page="Augmentations"
    )
    app.selectbox(key="augment_config").select_index(1).run()
    next(c for c in app.checkbox if c.label.startswith("Copy-paste")).check().run()
    app.sidebar.radio(key="page").set_value("Predictions").run()
    select_by_text(app.selectbox(key="pred_a"), str(out / "val.csv"))
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]

    scratch = viewer_app.scratch_folder()
    assert list(temp.iterdir()) == [scratch] and scratch.name.startswith("trash-viewer-")
    written = [p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file()]
    assert any(name.startswith("confusion/") for name in written)  # the confusion matrix's PNG
    labels = [name for name in written if not name.startswith("confusion/")]
    assert len(labels) == len(read_coco_json(sample_root / "train.json")["images"])  # the copy-paste bank's
    assert not any(name.endswith(".tmp") for name in written)
    assert list(work.iterdir()) == []
    assert (tree_digest(sample_root), tree_digest(out), config.read_bytes()) == inputs


def test_viewer_refuses_to_serve_beyond_localhost(monkeypatch, sample_root: Path) -> None:
    st_config.set_option("server.address", "0.0.0.0")
    app = run_viewer(monkeypatch, "--data-root", sample_root)
    assert any("only serves localhost" in e.value for e in app.error)
    assert not app.table and not app.image


def test_viewer_without_arguments_says_how_to_start(monkeypatch, tmp_path: Path) -> None:
    app = run_viewer(monkeypatch)
    assert any("--data-root" in e.value for e in app.error)
    # `streamlit run tools/viewer.py -- --data-root MISSING`: the launcher's message, on the page
    app = run_viewer(monkeypatch, "--data-root", tmp_path / "missing")
    assert [e.value for e in app.error] == [
        f"Cannot start: --data-root {tmp_path / 'missing'}: not a folder (give the folder that holds the COCO jsons)"
    ]
    assert not app.table and not app.image


def test_label_maps_for_the_mapper_stay_in_the_scratch_folder(tmp_path: Path) -> None:
    from mask2former.viewer.augment import write_label_png

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    image = {"id": "../../escaped", "file_name": "images/a.jpg", "height": 8, "width": 8}
    ann = {"id": 1, "image_id": image["id"], "category_id": 1, "segmentation": [[0, 0, 6, 0, 6, 6, 0, 6]]}
    data = {"images": [image], "annotations": [ann], "categories": [{"id": 1, "name": "Paper"}]}
    (root / "train.json").write_text(json.dumps(data))
    scratch = tmp_path / "scratch"
    path = write_label_png(load_index(root / "train.json", root), image["id"], scratch)
    assert path.resolve().is_relative_to(scratch.resolve()) and path.is_file()
    outside = {p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(scratch)}
    assert outside == {root / "images" / "a.jpg", root / "train.json"}


def run_launcher(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(VIEWER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": ""},  # the installed package, no path tricks
        cwd=REPO,
    )


@pytest.mark.slow
@pytest.mark.subprocess
def test_launcher_refuses_a_bad_path_in_one_line(tmp_path: Path, sample_root: Path, tmp_path_factory) -> None:
    checkpoint = tmp_path_factory.mktemp("run") / "model_final.pth"
    checkpoint.write_bytes(b"")
    cases = [
        (("--data-root", tmp_path / "missing"), f"--data-root {tmp_path / 'missing'}: not a folder"),
        (("--data-root", VIEWER), f"--data-root {VIEWER}: not a folder"),
        (("--data-root", sample_root, "--pred", tmp_path / "none.csv"), f"--pred {tmp_path / 'none.csv'}: not found"),
        (
            ("--data-root", sample_root, "--config-file", tmp_path / "no.yaml"),
            f"--config-file {tmp_path / 'no.yaml'}: not found",
        ),
        (("--data-root", sample_root, "--model", tmp_path / "m.onnx"), f"--model {tmp_path / 'm.onnx'}: not found"),
        (
            ("--data-root", sample_root, "--model", checkpoint),
            f"--model {checkpoint}: a checkpoint needs its config",
        ),
    ]
    for args, message in cases:
        result = run_launcher(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"viewer.py: {message}"), result.stderr
        assert "Traceback" not in result.stderr and not result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written

    debug = run_launcher("--data-root", tmp_path / "missing", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ViewerArgumentError" in debug.stderr
    usage = run_launcher()  # argparse's own message for a missing --data-root
    assert usage.returncode == 2 and "--data-root" in usage.stderr and "Traceback" not in usage.stderr


# ---- the Model page: a --model through the Predictor ---------------------------------------------------


def viewer_args(data_root: Path, models: list = (), configs: list = ()):  # noqa: ANN201  (a Namespace)
    import argparse

    return argparse.Namespace(data_root=str(data_root), pred=[], config_file=list(configs), model=list(models))


def _miou(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Mean IoU over the classes present in the ground truth or the prediction (ignored pixels left out)."""
    valid = gt < num_classes
    gt, pred = gt[valid], pred[valid]
    present = [c for c in range(num_classes) if ((gt == c) | (pred == c)).any()]
    return float(np.mean([((gt == c) & (pred == c)).sum() / ((gt == c) | (pred == c)).sum() for c in present]))


def test_model_paths_are_checked_at_start(tmp_path: Path, sample_root: Path) -> None:
    """The --model paths are told apart by what they hold (the files' contents are the Predictor's to check)."""
    from mask2former.inference import predictor

    run, package = tmp_path / "run", tmp_path / "package"
    checkpoint, config, onnx = run / "model_final.pth", run / "config.yaml", package / "model.onnx"
    for path in (checkpoint, config, onnx):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    sources = model_sources([package, run, onnx, checkpoint], [config, REPO / "configs" / "quickstart.yaml"])
    assert [(s.source, s.weights) for s in sources] == [
        (package, None),
        (run, None),
        (onnx, None),
        (config, checkpoint),  # a checkpoint with each config
        (REPO / "configs" / "quickstart.yaml", checkpoint),
    ]
    assert [s.files for s in sources[:3]] == [(onnx,), (config, checkpoint), (onnx,)]
    assert [s.label.rsplit(" (", 1)[-1] for s in sources[:3]] == ["model package)", "run folder)", "ONNX)"]
    # the folder layouts the viewer recognises are the Predictor's
    assert (predictor.PACKAGE_MODEL, predictor.RUN_CONFIG, predictor.RUN_WEIGHTS) == (
        "model.onnx",
        "config.yaml",
        "model_final.pth",
    )

    empty = tmp_path / "empty"
    empty.mkdir()
    refusals = {
        (str(tmp_path / "none.onnx"),): f"--model {tmp_path / 'none.onnx'}: not found (check the path)",
        (str(checkpoint),): f"--model {checkpoint}: a checkpoint needs its config: add --config-file CFG",
        (str(empty),): f"--model {empty}: a folder with neither model.onnx (a model package) nor config.yaml",
        (str(config),): f"--model {config}: a config file: give it with --config-file",
    }
    for models, message in refusals.items():
        with pytest.raises(ViewerArgumentError) as caught:
            check_arguments(viewer_args(sample_root, models))
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    check_arguments(viewer_args(sample_root, [checkpoint], [config]))  # with its config: accepted


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_the_viewers_prediction_is_the_predictors(sample_root: Path, tiny_package: TinyPackage, predictions) -> None:
    record = predictions["dicts"][0]
    photo = Path(record["file_name"])
    image = read_image(photo)
    roots = Roots.from_paths([sample_root, tiny_package.run, tiny_package.folder])
    expected = {
        "package": Predictor(tiny_package.folder)(photo),
        "run": Predictor.from_run(tiny_package.run)(photo),
    }
    given = {
        "package": model_sources([tiny_package.folder], [])[0],
        "run": model_sources([tiny_package.run], [])[0],
        "checkpoint": model_sources([tiny_package.run / "model_final.pth"], [tiny_package.run / "config.yaml"])[0],
    }
    for name, source in given.items():
        got = predict_photo(load_predictor(source, roots, device="cpu"), image)
        reference = expected["package" if name == "package" else "run"]
        np.testing.assert_array_equal(got.probabilities, reference.probabilities)
        np.testing.assert_array_equal(got.labels, reference.labels)
        assert got.class_names == reference.class_names
    # an uploaded photo's bytes decode to the pixels the file reader gives, so the prediction is the same
    assert np.array_equal(read_upload(photo.read_bytes()), image)

    labels, names = expected["package"].labels, expected["package"].class_names
    shares = class_shares(expected["package"])
    assert list(shares["class"]) == names and shares["pixels"].sum() == labels.size
    assert shares["share"].sum() == pytest.approx(1.0) and shares["mean probability"].sum() == pytest.approx(1.0)
    assert dict(zip(shares["class"], shares["pixels"], strict=True)) == {
        name: int((labels == k).sum()) for k, name in enumerate(names)
    }
    probabilities = expected["package"].probabilities
    assert list(shares["mean probability"]) == pytest.approx([float(p.mean()) for p in probabilities], abs=1e-7)
    gt = read_label(record["sem_seg_file_name"])
    scores = image_scores(gt, labels, len(names))
    assert scores["mIoU"] == pytest.approx(_miou(gt, labels, len(names)))
    assert scores["pACC"] == pytest.approx(float((gt == labels).mean()))

    # the model's files are read only under the roots the viewer was given
    with pytest.raises(PathOutsideRoots):
        load_predictor(given["package"], Roots.from_paths([sample_root]))


def test_uploads_keep_the_services_limits(tmp_path: Path, sample_root: Path) -> None:
    with pytest.raises(NotAnImageError, match="not an image"):
        read_upload(b"not an image at all\n" * 50)
    with pytest.raises(ImageTooLargeError, match="over the limit of 20.0 MiB"):
        read_upload(b"\0" * (20 * 2**20 + 1))
    images = data_root_images(Roots.from_paths([sample_root]), sample_root)
    assert images and all(path.suffix == ".jpg" and path.is_relative_to(sample_root) for path in images)


def photo_bytes(seed: int, size: int = 64) -> bytes:
    picture = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", picture)
    assert ok
    return encoded.tobytes()


def shown_shares(app: AppTest) -> dict[str, tuple[int, float]]:
    """class -> (pixels, mean probability) as the Model page's table shows them."""
    table = table_with(app, "share")
    rows = zip(table["class"], table["pixels"], table["mean probability"], strict=True)
    return {name: (int(pixels), float(mean)) for name, pixels, mean in rows}


def shares_of(prediction) -> dict:  # noqa: ANN001  (a Prediction)
    """class -> (pixels, mean probability) of a Predictor's prediction, counted here."""
    return {
        name: (int((prediction.labels == k).sum()), pytest.approx(float(prediction.probabilities[k].mean()), abs=1e-7))
        for k, name in enumerate(prediction.class_names)
    }


@pytest.mark.slow
def test_model_page_shows_a_packages_prediction(monkeypatch, sample_root: Path, tiny_package: TinyPackage) -> None:
    package = tiny_package.folder
    before = tree_hashes(package, sample_root)
    app = run_viewer(monkeypatch, "--data-root", sample_root, "--model", package, page="Model")
    assert app.selectbox(key="model_json").value == "val.json" and not app.error
    first = read_coco_json(sample_root / "val.json")["images"][0]
    expected = Predictor(package)(sample_root / first["file_name"])
    captions = [image.captions[0] for image in app.image if image.captions]
    assert {"prediction overlay", "ground truth overlay", "legend"} <= set(captions)
    assert shown_shares(app) == shares_of(expected)
    gt = label_map(load_index(sample_root / "val.json", sample_root), first["id"])
    assert shown_metric(app, "mIoU of this image") == f"{_miou(gt, expected.labels, 11):.4f}"

    # TTA: the package is a fixed 64 x 64 export, the TTA views are not: one line, no traceback
    app.checkbox(key="model_tta").check().run()
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "fixed-size export" in errors[0] and "\n" not in errors[0], errors
    app.checkbox(key="model_tta").uncheck().run()

    # an uploaded photo: decoded in memory, predicted, no ground truth to score
    app.radio(key="model_photo_source").set_value("Upload a photo").run()
    assert any("Upload a photo" in info.value for info in app.info)
    app.file_uploader(key="model_upload").upload("photo.png", photo_bytes(5), "image/png")
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    expected = Predictor(package)(cv2.imdecode(np.frombuffer(photo_bytes(5), np.uint8), cv2.IMREAD_COLOR))
    assert shown_shares(app) == shares_of(expected)
    assert not [m for m in app.metric if m.label == "mIoU of this image"]
    assert any(image.captions == ["prediction overlay"] for image in app.image)

    app.file_uploader(key="model_upload").clear().upload("notes.png", b"not an image\n" * 20, "image/png")
    app.run()
    errors = [e.value for e in app.error]
    assert errors == ["notes.png: the upload is not an image (PNG, JPEG, BMP, TIFF, WebP): send an image file"]
    assert not [image for image in app.image if image.captions == ["prediction overlay"]]

    # an image file under the data root
    app.radio(key="model_photo_source").set_value("An image under the data root").run()
    name = app.selectbox(key="model_root_image").value
    expected = Predictor(package)(sample_root / name)
    assert shown_shares(app) == shares_of(expected) and not app.error
    assert tree_hashes(package, sample_root) == before


@pytest.mark.slow
def test_model_page_on_a_folder_of_photos_starts_on_the_image_files(
    monkeypatch, tmp_path: Path, tiny_package: TinyPackage
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(photo_bytes(3))
    app = run_viewer(monkeypatch, "--data-root", photos, "--model", tiny_package.folder, page="Model")
    assert app.radio(key="model_photo_source").value == "An image under the data root"
    assert not app.error and app.selectbox(key="model_root_image").value == "a.png"
    assert shown_shares(app) == shares_of(Predictor(tiny_package.folder)(photos / "a.png"))


def test_model_page_without_a_model_says_how(monkeypatch, sample_root: Path) -> None:
    app = run_viewer(monkeypatch, "--data-root", sample_root, page="Model")
    assert any("--model" in info.value for info in app.info) and not app.image


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_documented_viewer_model_commands_run(monkeypatch, tmp_path, sample_root, tiny_package) -> None:
    """docs/tools.md's commands in a folder holding the sample data, a package and a run where the docs name them:
    each model predicts the first val image; TTA gives the Predictor's TTA prediction."""
    commands = doc_commands("A model in the viewer")
    assert commands and all(argv[:2] == ["python", "tools/viewer.py"] for argv in commands)
    for target, name in (
        (sample_root, "datasets/sample"),
        (tiny_package.folder, "output/package"),
        (tiny_package.run, "output/demo/quickstart"),
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(target)
    monkeypatch.chdir(tmp_path)
    first = read_coco_json(sample_root / "val.json")["images"][0]
    photo = sample_root / first["file_name"]
    run_prediction = Predictor.from_run(tiny_package.run)
    models = 0
    for argv in commands:
        app = run_viewer(monkeypatch, *argv[2:], page="Model")
        options = app.selectbox(key="model_choice").options
        for position, label in enumerate(options):
            app.selectbox(key="model_choice").select_index(position).run()
            assert not app.exception and not app.error, (label, [e.value for e in app.error])
            expected = Predictor(tiny_package.folder) if "package" in label else run_prediction
            prediction = expected(photo)
            assert shown_shares(app) == shares_of(prediction), label
            if "run folder" in label:  # test-time augmentation: the Predictor's
                app.checkbox(key="model_tta").check().run()
                assert not app.error, [e.value for e in app.error]
                with_tta = expected(photo, tta=True)
                assert shown_shares(app) == shares_of(with_tta)
                means = [result.probabilities.mean(axis=(1, 2)) for result in (prediction, with_tta)]
                assert not np.allclose(*means, atol=1e-5)  # so the page's numbers tell the two apart
                app.checkbox(key="model_tta").uncheck().run()
            models += 1
    assert models == 3  # the package, the run folder, the checkpoint with its config
