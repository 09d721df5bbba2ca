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
from conftest import REPO  # noqa: E402
from streamlit import config as st_config  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from mask2former.data.coco_semantic import load_with_manifest  # noqa: E402
from mask2former.data.stats import dataset_statistics  # noqa: E402
from mask2former.evaluation.sem_seg import SemSegEvaluator, confusion_matrix, metrics_from_confusion  # noqa: E402
from mask2former.io.coco_json import read_coco_json
from mask2former.io.images import read_label  # noqa: E402
from mask2former.io.probabilities import load_probabilities, probability_path, save_probabilities  # noqa: E402
from mask2former.io.submission import downsample_label_map, read_submission, write_submission  # noqa: E402
from mask2former.viewer import app as viewer_app  # noqa: E402
from mask2former.viewer.arguments import bind_problem, is_loopback  # noqa: E402
from mask2former.viewer.compare import FolderPredictions, compare, discover_prediction_sets  # noqa: E402
from mask2former.viewer.data import filter_images, label_map, load_index  # noqa: E402
from mask2former.viewer.launch import streamlit_command  # noqa: E402
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
def test_launcher_refuses_a_bad_path_in_one_line(tmp_path: Path, sample_root: Path) -> None:
    cases = [
        (("--data-root", tmp_path / "missing"), f"--data-root {tmp_path / 'missing'}: not a folder"),
        (("--data-root", VIEWER), f"--data-root {VIEWER}: not a folder"),
        (("--data-root", sample_root, "--pred", tmp_path / "none.csv"), f"--pred {tmp_path / 'none.csv'}: not found"),
        (
            ("--data-root", sample_root, "--config-file", tmp_path / "no.yaml"),
            f"--config-file {tmp_path / 'no.yaml'}: not found",
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
