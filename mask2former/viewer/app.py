"""The viewer's Streamlit page: the only module of the package that imports streamlit.

`tools/viewer.py` is the script `streamlit run` executes; inside Streamlit it calls `show(parser, argv)`, which
draws one run of the page: the sidebar, then the chosen page (Dataset, Browse, Predictions, Augmentations, Model).
Everything the page computes comes from the plain modules beside this one (paths, data, stats, compare, augment,
model), cached here per file signature (path, mtime, size); a model's Predictor is cached per model. Files are read
only through them, under the roots the viewer was started with; the only files written are label maps and plots in
`scratch_folder()`, through mask2former.io.files; an uploaded photo stays in memory.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from streamlit import runtime

from ..config import load_config
from ..data.classes import palette_for
from ..errors import UserError
from ..inference.predictor import Prediction, Predictor
from ..io.images import MAX_IMAGE_BYTES, ImageBytesError, read_image
from ..modeling import register_all  # noqa: F401  (every model family's config keys and classes)
from ..utils.visualize import legend
from .arguments import ModelSource, ViewerArgumentError, bind_problem, check_arguments, model_sources
from .augment import (
    build_mapper,
    copy_paste_enabled,
    draw_samples,
    input_settings,
    mapper_record,
    training_dicts,
)
from .compare import (
    Comparison,
    FolderPredictions,
    PredictionSet,
    class_iou_table,
    compare,
    confusion_table,
    discover_prediction_sets,
    read_csv_predictions,
)
from .data import (
    DatasetIndex,
    difference_picture,
    encode_jpeg,
    filter_images,
    image_objects,
    label_map,
    load_index,
    match_size,
    overlay_picture,
    resize_to_width,
    thumbnail,
)
from .model import (
    UPLOAD_TYPES,
    class_mismatch,
    class_shares,
    data_root_images,
    image_scores,
    load_predictor,
    predict_photo,
    prediction_pictures,
    read_upload,
    renamed_classes,
)
from .paths import Roots, file_signature, list_files
from .stats import (
    SIZE_BINS,
    class_table,
    object_size_table,
    objects_per_image_table,
    palette_hex,
    pixel_colour_table,
)

PAGES = ("Dataset", "Browse", "Predictions", "Augmentations", "Model")
# Datasets up to this many images get the label-map statistics computed on opening; larger ones on a click.
AUTO_PIXEL_STATS = 400
GRID_COLUMNS = 4
SHOWN_FILE_ERRORS = 10  # unreadable prediction files listed one by one on the Predictions page; then a count

# Errors the page shows as a message instead of a traceback: a user's file (UserError: a refused path, a bad json,
# submission or prediction file, a config), an unreadable file, and what numpy/OpenCV raise for a malformed one.
SHOWN_ERRORS = (UserError, OSError, ValueError, KeyError)
# A model that cannot be loaded or run (a checkpoint of another architecture, a runtime's refusal) says so too.
MODEL_ERRORS = (*SHOWN_ERRORS, RuntimeError)

JsonKey = tuple[str, int, int, str]  # (json path, mtime_ns, size, image root): the cache key of a dataset


@dataclass(frozen=True)
class Context:
    data_root: Path
    roots: Roots
    pred_paths: tuple[Path, ...]
    config_files: tuple[Path, ...]
    models: tuple[ModelSource, ...] = ()

    @property
    def roots_key(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.roots.key()


# ---- cached computations (keyed on file path + mtime + size) -------------------------------------------


@st.cache_resource(max_entries=16, show_spinner="Reading the annotation file…")
def cached_index(path: str, mtime_ns: int, size: int, image_root: str) -> DatasetIndex:
    """The parsed, indexed json (shared, read-only; a new mtime or size gives a new entry)."""
    return load_index(path, image_root)


def index_of(key: JsonKey) -> DatasetIndex:
    return cached_index(*key)


@st.cache_data(max_entries=16, show_spinner="Counting…")
def cached_json_tables(key: JsonKey) -> dict[str, pd.DataFrame]:
    index = index_of(key)
    return {
        "classes": class_table(index),
        "objects": objects_per_image_table(index),
        "sizes": object_size_table(index),
    }


@st.cache_data(max_entries=16, show_spinner="Reading every image and label map…")
def cached_pixel_table(key: JsonKey, roots_key: tuple) -> tuple[pd.DataFrame, dict[str, Any]]:
    return pixel_colour_table(index_of(key), Roots.from_key(roots_key))


@st.cache_data(max_entries=128, show_spinner=False)
def cached_label(key: JsonKey, image_id: Any) -> np.ndarray:
    return label_map(index_of(key), image_id)


@st.cache_data(max_entries=4096, show_spinner=False)
def cached_thumbnail(
    key: JsonKey, roots_key: tuple, image_id: Any, image_sig: tuple, width: int, alpha: float, hidden: tuple
) -> bytes:
    return thumbnail(index_of(key), Roots.from_key(roots_key), image_id, width, alpha, hidden)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_image(path: str, mtime_ns: int, size: int) -> np.ndarray:
    return read_image(path)


@st.cache_resource(max_entries=4, show_spinner="Reading the submission CSV…")
def cached_csv(path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    return read_csv_predictions(Path(path))


def prediction_source(prediction_set: PredictionSet, roots: Roots) -> Any:
    path = roots.check(prediction_set.path)
    if prediction_set.kind == "csv":
        return cached_csv(*file_signature(path))
    return FolderPredictions(path, roots)


@st.cache_data(max_entries=16, show_spinner="Scoring the predictions…")
def cached_comparison(key: JsonKey, roots_key: tuple, sets: tuple[PredictionSet, ...], signatures: tuple) -> Comparison:
    roots = Roots.from_key(roots_key)
    index = index_of(key)
    sources = [prediction_source(s, roots) for s in sets]
    # rendered here, not through cached_label: the comparison is cached whole, and N labels would evict the
    # few the Browse and side-by-side views keep
    ground_truth = (lambda image_id: label_map(index, image_id)) if index.has_gt else None
    return compare(index, sources, [s.name for s in sets], ground_truth)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_prediction(prediction_set: PredictionSet, signature: tuple, roots_key: tuple, file_name: str):
    return prediction_source(prediction_set, Roots.from_key(roots_key)).get(file_name)


@st.cache_resource
def scratch_folder() -> Path:
    """The viewer's own temporary folder (label PNGs for the mapper, plots); removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="trash-viewer-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


@st.cache_data(max_entries=16, show_spinner="Drawing the confusion matrix…")
def cached_confusion_png(hist_bytes: bytes, shape: tuple[int, int], class_names: tuple[str, ...]) -> bytes:
    from ..evaluation.sem_seg import plot_confusion_matrix

    hist = np.frombuffer(hist_bytes, dtype=np.int64).reshape(shape)
    digest = hashlib.sha1(hist_bytes + repr((shape, class_names)).encode()).hexdigest()[:16]
    path = scratch_folder() / "confusion" / f"{digest}.png"
    plot_confusion_matrix(hist, list(class_names), path)
    return path.read_bytes()


@st.cache_resource(max_entries=4, show_spinner="Building the training mapper (with copy-paste: its object bank)…")
def cached_mapper(
    config: str | None, config_sig: tuple | None, opts: tuple[str, ...], key: JsonKey, roots_key: tuple
) -> tuple[Any, str]:
    """The training mapper of the config (+ overrides) and its INPUT keys as text.

    With copy-paste on, the object bank comes from the images of the json `key` (inside the roots).
    """
    cfg = load_config(config, list(opts))
    dicts = None
    if copy_paste_enabled(cfg):
        dicts = training_dicts(index_of(key), Roots.from_key(roots_key), scratch_folder())
    return build_mapper(cfg, dicts), input_settings(cfg)


@st.cache_data(max_entries=32, show_spinner="Running the mapper…")
def cached_draws(
    key: JsonKey,
    roots_key: tuple,
    image_id: Any,
    image_sig: tuple,
    config: str | None,
    config_sig: tuple | None,
    opts: tuple[str, ...],
    draws: int,
    seed: int,
    alpha: float,
) -> list[tuple[bytes, str]]:
    index = index_of(key)
    record = mapper_record(index, Roots.from_key(roots_key), image_id, scratch_folder())
    mapper, _ = cached_mapper(config, config_sig, opts, key, roots_key)
    pictures = []
    for number, sample in enumerate(draw_samples(mapper, record, draws, seed)):
        picture = overlay_picture(sample["image"], sample["label"], index.palette, alpha)
        height, width = sample["image"].shape[:2]
        pictures.append((encode_jpeg(picture), f"draw {number}: {width}x{height}"))
    return pictures


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def cached_predictor(source: ModelSource, signatures: tuple, roots_key: tuple) -> Predictor:
    """The model's Predictor, one per model (new files, by their signatures, give a new one)."""
    return load_predictor(source, Roots.from_key(roots_key))


@st.cache_data(max_entries=32, show_spinner="Predicting…")
def cached_photo_prediction(
    source: ModelSource, signatures: tuple, roots_key: tuple, photo_key: tuple, tta: bool, _image: np.ndarray
) -> Prediction:
    """The model's prediction of the photo that `photo_key` names (a file's signature or an upload's digest)."""
    return predict_photo(cached_predictor(source, signatures, roots_key), _image, tta)


# ---- shared widgets -----------------------------------------------------------------------------------


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        st.error(
            "The viewer needs its arguments: `python tools/viewer.py --data-root DIR [--pred CSV_OR_DIR ...]`.\n\n"
            f"```\n{parser.format_usage()}```"
        )
        st.stop()


def make_context(args: argparse.Namespace) -> Context:
    try:
        check_arguments(args)  # the launcher's checks and messages, for `streamlit run` too
        data_root = Path(args.data_root).expanduser().resolve(strict=True)
        preds = tuple(Path(p).expanduser().resolve(strict=True) for p in args.pred)
        configs = tuple(Path(p).expanduser().resolve(strict=True) for p in args.config_file)
        models = tuple(
            dataclasses.replace(
                model,
                source=model.source.expanduser().resolve(strict=True),
                weights=None if model.weights is None else model.weights.expanduser().resolve(strict=True),
            )
            for model in model_sources(args.model, args.config_file)
        )
    except (ViewerArgumentError, OSError) as error:
        st.error(f"Cannot start: {error}")
        st.stop()
    model_paths = [path for model in models for path in (model.source, model.weights) if path is not None]
    return Context(data_root, Roots.from_paths([data_root, *preds, *configs, *model_paths]), preds, configs, models)


def json_key(ctx: Context, path: Path) -> JsonKey:
    checked = ctx.roots.check(path)
    return (*file_signature(checked), str(ctx.data_root))


def select_dataset(ctx: Context, page: str, prefer: tuple[str, ...]) -> tuple[JsonKey, DatasetIndex]:
    """A selectbox of the jsons under the data root; the chosen one, parsed (or the page stops with a message)."""
    jsons = list_files(ctx.roots, ctx.data_root, ".json")
    if not jsons:
        st.error(f"No .json file under {ctx.data_root}.")
        st.stop()
    names = [p.relative_to(ctx.data_root).as_posix() for p in jsons]
    default = next((names.index(n) for n in prefer if n in names), 0)
    choice = st.selectbox("Annotation file", names, index=default, key=f"{page}_json")
    try:
        key = json_key(ctx, ctx.data_root / choice)
        return key, index_of(key)
    except SHOWN_ERRORS as error:
        st.error(f"Cannot open {choice}: {error}")
        st.stop()


def widget_suffix(key: JsonKey) -> str:
    return hashlib.sha1(key[0].encode()).hexdigest()[:8]


def class_colors(index: DatasetIndex, with_background: bool = False) -> tuple[list[str], list[str]]:
    start = 0 if with_background else 1
    return index.class_names[start:], palette_hex(index.palette)[start:]


def class_bar_chart(table: pd.DataFrame, value: str, index: DatasetIndex, title: str) -> alt.Chart:
    names, colors = class_colors(index, with_background="Background" in set(table["class"]))
    return (
        alt.Chart(table, title=title)
        .mark_bar()
        .encode(
            x=alt.X("class:N", sort=None, title=None),
            y=alt.Y(f"{value}:Q", title=value),
            color=alt.Color("class:N", scale=alt.Scale(domain=names, range=colors), legend=None),
            tooltip=["class", value],
        )
    )


def styled(table: pd.DataFrame, number_format: str = "{:g}") -> Any:
    """The table with its float columns formatted (the values themselves stay as they are)."""
    floats = [column for column in table.columns if table[column].dtype.kind == "f"]
    return table.style.format(number_format, subset=floats, na_rep="n/a")


def chart_and_table(chart: alt.Chart, table: pd.DataFrame, table_kind: str = "table") -> None:
    """A chart with its numbers beside it."""
    left, right = st.columns([3, 2])
    left.altair_chart(chart, width="stretch")
    if table_kind == "table":
        right.table(styled(table), hide_index=True)
    else:
        right.dataframe(styled(table), hide_index=True)


def legend_picture(index: DatasetIndex, hidden: tuple[int, ...] = ()) -> np.ndarray:
    shown = [i for i in range(index.num_classes) if i not in hidden]
    return legend([index.class_names[i] for i in shown], [index.palette[i] for i in shown], width=200)


# ---- pages --------------------------------------------------------------------------------------------


def dataset_page(ctx: Context) -> None:
    st.header("Dataset")
    key, index = select_dataset(ctx, "dataset", ("train_all.json", "train.json"))
    tables = cached_json_tables(key)
    dataset_summary(index, tables)

    st.subheader("Objects and images per class")
    classes = tables["classes"]
    left, right = st.columns([3, 2])
    left.altair_chart(class_bar_chart(classes, "objects", index, "objects per class"), width="stretch")
    left.altair_chart(class_bar_chart(classes, "images", index, "images holding the class"), width="stretch")
    right.table(styled(classes), hide_index=True)

    st.subheader("Objects per image")
    objects = tables["objects"]
    chart = (
        alt.Chart(objects, title="images by number of objects")
        .mark_bar()
        .encode(x=alt.X("objects:O"), y=alt.Y("images:Q"), tooltip=["objects", "images"])
    )
    chart_and_table(chart, objects, "dataframe")

    st.subheader("Object size relative to the image")
    chart_and_table(object_size_chart(tables["sizes"], index), tables["sizes"], "dataframe")

    st.subheader("Pixel share and mean colour per class (from the label maps)")
    if not index.has_gt:
        st.info("No label maps without annotations.")
        return
    pixel_statistics(ctx, key, index)


def dataset_summary(index: DatasetIndex, tables: dict[str, pd.DataFrame]) -> None:
    """The counts at the top of the Dataset page, and the annotations that cannot be rendered."""
    counts = index.object_counts()
    columns = st.columns(4)
    columns[0].metric("images", len(index.images))
    columns[1].metric("objects", int(tables["classes"]["objects"].sum()))
    columns[2].metric("objects per image", f"{np.mean(list(counts.values())) if counts else 0:.2f}")
    columns[3].metric("classes", index.num_classes - 1)
    if not index.has_gt:
        st.info("This json has no annotations (test images): only image counts apply.")
    skipped = sum(len(v) for v in index.bad_annotations.values())
    if skipped:
        with st.expander(f"{skipped} annotation(s) cannot be rendered and are left out"):
            st.code("\n".join(m for v in index.bad_annotations.values() for m in v)[:20000])


def object_size_chart(sizes: pd.DataFrame, index: DatasetIndex) -> alt.Chart:
    """Objects by their area's share of the image (SIZE_BINS), stacked by class."""
    names, colors = class_colors(index)
    long = sizes.melt(id_vars="class", value_vars=list(SIZE_BINS), var_name="area / image", value_name="objects")
    return (
        alt.Chart(long, title="objects by area share of their image")
        .mark_bar()
        .encode(
            x=alt.X("area / image:N", sort=list(SIZE_BINS)),
            y=alt.Y("objects:Q", stack=True),
            color=alt.Color("class:N", scale=alt.Scale(domain=names, range=colors)),
            tooltip=["class", "area / image", "objects"],
        )
    )


def pixel_statistics(ctx: Context, key: JsonKey, index: DatasetIndex) -> None:
    """Pixel share and mean colour per class from every label map (for a large json: after a click)."""
    flag = f"pixels:{key}"
    if len(index.images) > AUTO_PIXEL_STATS and not st.session_state.get(flag):
        st.caption(f"Reads all {len(index.images)} images and renders their label maps (about 10 ms each).")
        if not st.button("Compute pixel share and mean colour", key="pixel_button"):
            return
        st.session_state[flag] = True
    pixels, info = cached_pixel_table(key, ctx.roots_key)
    if info["failed"]:
        with st.expander(f"{len(info['failed'])} image(s) could not be read and are left out"):
            st.code("\n".join(info["failed"][:200]))
    shown = pixels.dropna(subset=["mean R"])
    chart = (
        alt.Chart(shown, title="pixel share (%), bars in each class's mean colour")
        .mark_bar(stroke="#888888")
        .encode(
            x=alt.X("class:N", sort=None, title=None),
            y=alt.Y("pixel %:Q"),
            color=alt.Color("mean colour:N", scale=None),
            tooltip=["class", "pixel %", "mean colour"],
        )
    )
    chart_and_table(chart, pixels)
    st.caption(f"over {info['images']} image(s)")


def browse_page(ctx: Context) -> None:
    st.header("Browse")
    key, index = select_dataset(ctx, "browse", ("train_all.json", "train.json", "val.json"))
    counts = index.object_counts()
    contains, low, high, alpha, hidden = browse_filters(index, widget_suffix(key), max(counts.values(), default=0))
    ids = filter_images(index, contains, low, high)
    chosen = browse_grid(ctx, key, index, ids, counts, alpha, hidden)
    if not ids:
        st.info("No image matches the filters.")
        return

    st.subheader("One image")
    default = ids.index(chosen[0]) if chosen else 0
    image_id = st.selectbox(
        "Image", ids, index=default, format_func=lambda i: index.image(i)["file_name"], key="browse_large"
    )
    show_one_image(ctx, key, index, image_id, alpha, hidden)


def browse_filters(index: DatasetIndex, suffix: str, most: int) -> tuple[list[int], int, int, float, tuple[int, ...]]:
    """The Browse page's filters and overlay settings: (labels every image must contain, the range of the
    number of objects, overlay opacity, labels hidden in the overlay). `suffix` keys the widgets to the json."""
    with st.expander("Filters and overlay", expanded=True):
        left, middle, right = st.columns(3)
        contains_names = left.multiselect(
            "Contains every class", index.class_names[1:], key=f"browse_contains_{suffix}"
        )
        low, high = middle.slider(
            "Number of objects", 0, max(most, 1), (0, max(most, 1)), key=f"browse_objects_{suffix}"
        )
        alpha = right.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="browse_alpha")
        st.caption("Classes drawn in the overlay")
        toggles = st.columns(5)
        hidden = tuple(
            label
            for label in range(1, index.num_classes)
            if not toggles[(label - 1) % 5].checkbox(
                index.class_names[label], True, key=f"browse_show_{label}_{suffix}"
            )
        )
    contains = [index.class_names.index(name) for name in contains_names]
    return contains, low, high, alpha, hidden


def browse_grid(
    ctx: Context,
    key: JsonKey,
    index: DatasetIndex,
    ids: list,
    counts: dict,
    alpha: float,
    hidden: tuple[int, ...],
) -> list:
    """One page of thumbnails of the matching images `ids`, with the page controls and the legend; its ids."""
    per_page = st.session_state.get("browse_per_page", 12)
    pages = max(1, -(-len(ids) // per_page))
    if st.session_state.get("browse_page_number", 1) > pages:  # fewer pages after a filter change
        st.session_state["browse_page_number"] = 1
    top = st.columns([2, 1, 1])
    top[0].markdown(f"**{len(ids)}** of {len(index.images)} images match")
    page = top[1].number_input("Page", 1, pages, 1, key="browse_page_number")
    top[2].selectbox("Per page", (12, 24, 48), key="browse_per_page")
    chosen = ids[(page - 1) * per_page : page * per_page]
    grid_and_legend = st.columns([5, 1])
    with grid_and_legend[0]:
        for start in range(0, len(chosen), GRID_COLUMNS):
            cells = st.columns(GRID_COLUMNS)
            for cell, image_id in zip(cells, chosen[start : start + GRID_COLUMNS], strict=False):
                image = index.image(image_id)
                caption = f"{image['file_name']} · {counts[image_id]} objects"
                try:
                    sig = file_signature(index.image_path(ctx.roots, image))
                    cell.image(cached_thumbnail(key, ctx.roots_key, image_id, sig, 256, alpha, hidden), caption=caption)
                except SHOWN_ERRORS as error:
                    cell.error(f"{image['file_name']}: {error}")
    if index.has_gt:
        grid_and_legend[1].image(legend_picture(index, hidden), channels="BGR", caption="legend")
    return chosen


def show_one_image(
    ctx: Context, key: JsonKey, index: DatasetIndex, image_id: Any, alpha: float, hidden: tuple[int, ...]
) -> None:
    """The image large, beside its ground-truth overlay, with its objects and the annotations left out."""
    image = index.image(image_id)
    try:
        picture = cached_image(*file_signature(index.image_path(ctx.roots, image)))
    except SHOWN_ERRORS as error:
        st.error(f"{image['file_name']}: {error}")
        return
    label = cached_label(key, image_id) if index.has_gt else None
    left, right = st.columns(2)
    left.image(
        overlay_picture(picture, label, index.palette, alpha, hidden), channels="BGR", caption="ground truth overlay"
    )
    right.image(picture, channels="BGR", caption=f"{image['file_name']} ({image['width']}x{image['height']})")
    objects = image_objects(index, image_id)
    if objects:
        st.dataframe(styled(pd.DataFrame(objects), "{:.4f}"), hide_index=True)
    for message in index.bad_annotations.get(image_id, []):
        st.warning(f"left out: {message}")


def predictions_page(ctx: Context) -> None:
    st.header("Predictions")
    sets: list[PredictionSet] = []
    try:
        sets = discover_prediction_sets(ctx.roots, list(ctx.pred_paths))
    except SHOWN_ERRORS as error:
        st.error(str(error))
    if not sets:
        st.info(
            "No prediction set. Start the viewer with `--pred` and a submission CSV or a prediction folder "
            "(tools/predict.py's output: probs/*.npz and submission.csv)."
        )
        return
    key, index = select_dataset(ctx, "predictions", ("val.json", "test.json"))
    chosen = choose_prediction_sets(sets)
    if not index.has_gt and len(chosen) < 2:
        st.info("This json has no ground truth: choose a set B to compare the two prediction sets with each other.")
        return
    try:
        signatures = tuple(s.signature() for s in chosen)
        comparison = cached_comparison(key, ctx.roots_key, chosen, signatures)
    except SHOWN_ERRORS as error:
        st.error(f"Cannot score: {error}")
        return
    show_left_out(comparison)
    if comparison.num_images == 0:
        st.error("No image of this json is covered by every chosen prediction set.")
        return
    show_scores(index, comparison)

    st.subheader("IoU per class")
    table = class_iou_table(comparison, index.class_names)
    chart_and_table(class_iou_chart(table, comparison.tags), table)

    st.subheader("IoU per image (worst first)")
    st.dataframe(styled(comparison.per_image, "{:.4f}"), hide_index=True)

    st.subheader("Confusion matrix")
    show_confusion(index, comparison)

    st.subheader("Side by side")
    files = list(comparison.per_image["file_name"])
    file_name = st.selectbox("Image (worst first)", files, key="pred_image")
    show_side_by_side(ctx, key, index, chosen, signatures, file_name)


def choose_prediction_sets(sets: list[PredictionSet]) -> tuple[PredictionSet, ...]:
    """Set A and, optionally, set B, chosen in two selectboxes."""
    names = [s.name for s in sets]
    left, right = st.columns(2)
    first = left.selectbox("Prediction set A", range(len(sets)), format_func=lambda i: names[i], key="pred_a")
    others = [i for i in range(len(sets)) if i != first]
    second = right.selectbox(
        "Prediction set B (optional)",
        [None, *others],
        format_func=lambda i: "(none)" if i is None else names[i],
        key="pred_b",
    )
    return tuple(sets[i] for i in (first, second) if i is not None)


def show_left_out(comparison: Comparison) -> None:
    """What the scores leave out: images without a prediction, and prediction files that cannot be used."""
    for name, files in comparison.missing.items():
        st.warning(f"{name}: no prediction for {len(files)} image(s) of the json (left out), e.g. {files[0]}")
    for message in comparison.errors[:SHOWN_FILE_ERRORS]:
        st.error(f"left out of the scores: {message}")
    if len(comparison.errors) > SHOWN_FILE_ERRORS:
        more = len(comparison.errors) - SHOWN_FILE_ERRORS
        st.error(f"… and {more} more image(s) left out of the scores: their prediction files cannot be used")


def show_scores(index: DatasetIndex, comparison: Comparison) -> None:
    """Which set is which, what they are scored against, and each one's mIoU and pixel accuracy."""
    tags = comparison.tags
    against = "ground truth" if index.has_gt else f"A ({comparison.reference})"
    st.markdown(
        "  \n".join(f"**{tag}**: {name}" for tag, name in zip(tags, comparison.names, strict=True))
        + f"  \nscored against **{against}** over **{comparison.num_images}** image(s)"
    )
    columns = st.columns(2 * len(tags))
    for slot, (tag, metrics) in enumerate(zip(tags, comparison.metrics, strict=True)):
        delta = None
        if slot == 1:
            delta = f"{metrics['mIoU'] - comparison.metrics[0]['mIoU']:+.4f}"
        columns[2 * slot].metric(f"mIoU {tag}", f"{metrics['mIoU']:.4f}", delta)
        columns[2 * slot + 1].metric(f"pixel acc {tag}", f"{metrics['pACC']:.4f}")


def class_iou_chart(table: pd.DataFrame, tags: list[str]) -> alt.Chart:
    """Grouped bars of each scored set's IoU per class."""
    long = table.melt(id_vars="class", value_vars=[f"IoU {t}" for t in tags], var_name="set", value_name="IoU")
    return (
        alt.Chart(long, title="IoU per class")
        .mark_bar()
        .encode(
            x=alt.X("class:N", sort=None, title=None),
            xOffset="set:N",
            y=alt.Y("IoU:Q", scale=alt.Scale(domain=[0, 1])),
            color="set:N",
            tooltip=["class", "set", "IoU"],
        )
    )


def show_confusion(index: DatasetIndex, comparison: Comparison) -> None:
    """The confusion matrix of one scored set (a choice when there are two), as a picture and a table."""
    tags = comparison.tags
    which = 0
    if len(tags) > 1:
        which = st.radio("Set", range(len(tags)), format_func=lambda i: tags[i], horizontal=True, key="pred_cm")
    hist = comparison.hists[which]
    left, right = st.columns([1, 1])
    left.image(cached_confusion_png(hist.tobytes(), hist.shape, tuple(index.class_names)))
    right.dataframe(confusion_table(hist, index.class_names))
    right.caption(f"rows: {'ground truth' if index.has_gt else 'A'}, columns: {tags[which]} (pixels)")


def show_side_by_side(
    ctx: Context,
    key: JsonKey,
    index: DatasetIndex,
    sets: tuple[PredictionSet, ...],
    signatures: tuple,
    file_name: str,
) -> None:
    image = index.by_file_name(file_name)
    try:
        picture = cached_image(*file_signature(index.image_path(ctx.roots, image)))
        preds = [cached_prediction(s, sig, ctx.roots_key, file_name) for s, sig in zip(sets, signatures, strict=True)]
    except SHOWN_ERRORS as error:
        st.error(f"{file_name}: {error}")
        return
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="pred_alpha")
    tags = [chr(ord("A") + i) for i in range(len(sets))]
    width = picture.shape[1]
    if index.has_gt:
        gt = cached_label(key, image["id"])
        rows = [("ground truth", gt, None)] + [(f"prediction {t}", p, gt) for t, p in zip(tags, preds, strict=True)]
    else:
        rows = [("prediction A", preds[0], None), ("prediction B", preds[1], preds[0])]
    columns = st.columns(2 * len(rows))
    columns[0].image(picture, channels="BGR", caption=file_name)
    slot = 1
    for caption, label, reference in rows:
        columns[slot].image(overlay_picture(picture, label, index.palette, alpha), channels="BGR", caption=caption)
        slot += 1
        if reference is not None:  # at the prediction's size, as it is scored
            diff = difference_picture(match_size(reference, label.shape), label)
            columns[slot].image(resize_to_width(diff, width), channels="BGR", caption=f"{caption}: differences in red")
            slot += 1
    st.image(legend_picture(index), channels="BGR", caption="legend")


def augmentations_page(ctx: Context) -> None:
    st.header("Augmentations")
    key, index = select_dataset(ctx, "augment", ("train.json", "train_all.json"))
    if not index.images:
        st.info("This json lists no image.")
        return
    choice = augment_controls(ctx, index)
    try:
        pictures, input_yaml, original = mapper_draws(ctx, key, index, choice)
    except SHOWN_ERRORS as error:
        st.error(f"Cannot draw: {error}")
        return
    image = index.image(choice.image_id)
    label = cached_label(key, choice.image_id) if index.has_gt else None
    st.image(
        overlay_picture(original, label, index.palette, choice.alpha),
        channels="BGR",
        caption=f"original {image['width']}x{image['height']}",
        width=384,
    )
    for start in range(0, len(pictures), GRID_COLUMNS):
        cells = st.columns(GRID_COLUMNS)
        for cell, (data, caption) in zip(cells, pictures[start : start + GRID_COLUMNS], strict=False):
            cell.image(data, caption=caption)
    with st.expander("The config's INPUT keys"):
        st.code(input_yaml, language="yaml")  # KEY: value lines read well as YAML


@dataclass(frozen=True)
class AugmentChoice:
    """The Augmentations page's settings: the image, the config (its slot in the list and its path, None for the
    project defaults), the seed, the number of draws and the overlay opacity."""

    image_id: Any
    config: int
    config_path: str | None
    seed: int
    draws: int
    alpha: float


def augment_controls(ctx: Context, index: DatasetIndex) -> AugmentChoice:
    """The Augmentations page's widgets: image, config, seed, draws and overlay opacity."""
    configs = [None, *ctx.config_files]
    left, middle, right = st.columns([2, 2, 1])
    image_id = left.selectbox(
        "Image",
        [image["id"] for image in index.images],
        format_func=lambda i: index.image(i)["file_name"],
        key="augment_image",
    )
    config = middle.selectbox(
        "Config (its INPUT.* keys)",
        range(len(configs)),
        format_func=lambda i: "project defaults" if configs[i] is None else str(configs[i]),
        key="augment_config",
    )
    seed = right.number_input("Seed", 0, 10_000, 0, key="augment_seed")
    draws = st.slider("Draws", 1, 12, 4, key="augment_draws")
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="augment_alpha")
    config_path = str(configs[config]) if configs[config] else None
    return AugmentChoice(image_id, config, config_path, int(seed), int(draws), alpha)


def mapper_draws(
    ctx: Context, key: JsonKey, index: DatasetIndex, choice: AugmentChoice
) -> tuple[list[tuple[bytes, str]], str, np.ndarray]:
    """(the mapper's draws as pictures with captions, the config's INPUT keys, the original image); with a config
    whose mapper can copy-paste, a checkbox switches copy-paste."""
    config_path = choice.config_path
    config_sig = file_signature(ctx.roots.check(config_path)) if config_path else None
    configured = copy_paste_enabled(load_config(config_path))
    opts: tuple[str, ...] = ()
    if configured is not None:  # the mapper has copy-paste: offer to switch it
        pasting = st.checkbox(
            "Copy-paste (INPUT.COPY_PASTE.ENABLED; objects from this json's images)",
            configured,
            key=f"augment_copy_paste_{choice.config}",
        )
        opts = ("INPUT.COPY_PASTE.ENABLED", str(pasting)) if pasting != configured else ()
    image_sig = file_signature(index.image_path(ctx.roots, index.image(choice.image_id)))
    pictures = cached_draws(
        key,
        ctx.roots_key,
        choice.image_id,
        image_sig,
        config_path,
        config_sig,
        opts,
        choice.draws,
        choice.seed,
        choice.alpha,
    )
    _, input_yaml = cached_mapper(config_path, config_sig, opts, key, ctx.roots_key)
    return pictures, input_yaml, cached_image(*image_sig)


@dataclass(frozen=True)
class Photo:
    """The Model page's photo: its name, BGR pixels, cache key, and for an image of a json with ground truth, its
    label map and the json's classes (else None)."""

    name: str
    image: np.ndarray
    key: tuple
    ground_truth: np.ndarray | None = None
    json_classes: tuple[str, ...] | None = None
    json_palette: tuple[tuple[int, int, int], ...] | None = None


PHOTO_SOURCES = ("An image of a json", "An image under the data root", "Upload a photo")


def model_page(ctx: Context) -> None:
    st.header("Model")
    if not ctx.models:
        st.info(
            "No model. Start the viewer with `--model` and a run folder, an exported .onnx file, a model package, "
            "or a checkpoint with its `--config-file`."
        )
        return
    left, right = st.columns([4, 1])
    choice = left.selectbox(
        "Model", range(len(ctx.models)), format_func=lambda i: ctx.models[i].label, key="model_choice"
    )
    tta = right.checkbox("Test-time augmentation", False, key="model_tta", help="the config's TEST.AUG views")
    source = ctx.models[choice]
    photo = choose_photo(ctx)
    if photo is None:
        return
    try:
        signatures = tuple(file_signature(path) for path in source.files)
        prediction = cached_photo_prediction(source, signatures, ctx.roots_key, photo.key, tta, photo.image)
    except MODEL_ERRORS as error:
        st.error(f"Cannot predict {photo.name} with {source.label}: {error}")
        return
    show_photo_prediction(photo, prediction)


def choose_photo(ctx: Context) -> Photo | None:
    """The photo to predict: an image of a json (with its ground truth), an image file under the data root, or an
    uploaded one (decoded in memory); None, with a message, when there is none or it cannot be read."""
    has_json = bool(list_files(ctx.roots, ctx.data_root, ".json"))  # photos only: start on the image files
    kind = st.radio("Photo", PHOTO_SOURCES, index=0 if has_json else 1, horizontal=True, key="model_photo_source")
    try:
        if kind == PHOTO_SOURCES[0]:
            return json_photo(ctx)
        if kind == PHOTO_SOURCES[1]:
            return data_root_photo(ctx)
        return uploaded_photo()
    except SHOWN_ERRORS as error:
        st.error(str(error))
        return None


def json_photo(ctx: Context) -> Photo | None:
    key, index = select_dataset(ctx, "model", ("val.json", "test.json", "train_all.json"))
    if not index.images:
        st.info("This json lists no image.")
        return None
    image_id = st.selectbox(
        "Image",
        [image["id"] for image in index.images],
        format_func=lambda i: index.image(i)["file_name"],
        key=f"model_image_{widget_suffix(key)}",
    )
    image = index.image(image_id)
    signature = file_signature(index.image_path(ctx.roots, image))
    pixels = cached_image(*signature)
    if not index.has_gt:
        return Photo(image["file_name"], pixels, signature)
    classes, palette = tuple(index.class_names), tuple(index.palette)
    return Photo(image["file_name"], pixels, signature, cached_label(key, image_id), classes, palette)


def data_root_photo(ctx: Context) -> Photo | None:
    paths = data_root_images(ctx.roots, ctx.data_root)
    if not paths:
        st.info(f"No image file under {ctx.data_root}.")
        return None
    names = [path.relative_to(ctx.data_root).as_posix() for path in paths]
    name = st.selectbox("Image", names, key="model_root_image")
    signature = file_signature(ctx.roots.check(ctx.data_root / name))
    return Photo(name, cached_image(*signature), signature)


def uploaded_photo() -> Photo | None:
    limit = MAX_IMAGE_BYTES // 2**20
    uploaded = st.file_uploader("Photo", type=list(UPLOAD_TYPES), key="model_upload", max_upload_size=limit)
    if uploaded is None:
        st.info(f"Upload a photo (up to {limit} MiB): it is decoded in memory and never written.")
        return None
    data = uploaded.getvalue()
    try:
        pixels = read_upload(data)
    except ImageBytesError as error:
        st.error(f"{uploaded.name}: {error}")
        return None
    return Photo(uploaded.name, pixels, ("upload", hashlib.sha1(data).hexdigest()))


def show_photo_prediction(photo: Photo, prediction: Prediction) -> None:
    """The photo, its label overlay with the legend (and the ground truth's), the share of each class's pixels and,
    for an image with ground truth, its mIoU."""
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="model_alpha")
    overlay_image, legend_image = prediction_pictures(photo.image, prediction, alpha)
    height, width = photo.image.shape[:2]
    columns = st.columns([2, 2, 2, 1] if photo.ground_truth is not None else [2, 2, 1])
    columns[0].image(photo.image, channels="BGR", caption=f"{photo.name} ({width}x{height})")
    columns[1].image(overlay_image, channels="BGR", caption="prediction overlay")
    if photo.ground_truth is not None:
        truth = overlay_picture(photo.image, photo.ground_truth, list(photo.json_palette), alpha)
        columns[2].image(truth, channels="BGR", caption="ground truth overlay")
    columns[-1].image(legend_image, channels="BGR", caption="legend")
    if photo.ground_truth is not None:
        show_image_scores(photo, prediction)

    st.subheader("Pixels per class (prediction)")
    shares = class_shares(prediction)
    colours = palette_hex(palette_for(prediction.class_names))
    chart = (
        alt.Chart(shares, title="share of the photo's pixels")
        .mark_bar()
        .encode(
            x=alt.X("class:N", sort=None, title=None),
            y=alt.Y("share:Q", axis=alt.Axis(format="%")),
            color=alt.Color("class:N", scale=alt.Scale(domain=prediction.class_names, range=colours), legend=None),
            tooltip=["class", "pixels", alt.Tooltip("share:Q", format=".2%"), "mean probability"],
        )
    )
    left, right = st.columns([3, 2])
    left.altair_chart(chart, width="stretch")
    right.table(styled(shares, "{:.4f}"), hide_index=True)


def show_image_scores(photo: Photo, prediction: Prediction) -> None:
    """The image's mIoU and pixel accuracy against its ground truth, when the classes can be matched."""
    problem = class_mismatch(prediction.class_names, photo.json_classes)
    if problem is not None:
        st.info(f"No mIoU: {problem}.")
        return
    scores = image_scores(photo.ground_truth, prediction.labels, len(prediction.class_names))
    left, right = st.columns(2)
    left.metric("mIoU of this image", f"{scores['mIoU']:.4f}")
    right.metric("pixel accuracy", f"{scores['pACC']:.4f}")
    renamed = renamed_classes(prediction.class_names, photo.json_classes)
    if renamed:
        index, mine, theirs = renamed[0]
        st.caption(
            f"Scored by class index: {len(renamed)} class(es) are named differently, e.g. {index} is "
            f"{mine!r} for the model and {theirs!r} in the json."
        )


def show(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """One run of the page, with the viewer's command-line arguments (`argv`, default: sys.argv[1:])."""
    st.set_page_config(page_title="Trash data viewer", layout="wide")
    address = st.get_option("server.address") if runtime.exists() else "127.0.0.1"
    problem = bind_problem(address)
    if problem:
        st.error(problem)
        st.stop()
    ctx = make_context(parse_arguments(parser, sys.argv[1:] if argv is None else argv))
    st.sidebar.title("Trash viewer")
    page = st.sidebar.radio("Page", PAGES, key="page", bind="query-params")
    st.sidebar.caption(f"data root: {ctx.data_root}")
    for path in ctx.pred_paths:
        st.sidebar.caption(f"predictions: {path}")
    for model in ctx.models:
        st.sidebar.caption(f"model: {model.label}")
    {
        "Dataset": dataset_page,
        "Browse": browse_page,
        "Predictions": predictions_page,
        "Augmentations": augmentations_page,
        "Model": model_page,
    }[page](ctx)
