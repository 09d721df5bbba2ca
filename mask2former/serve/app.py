"""The HTTP service's app (FastAPI): `create_app(predictor)`.

    POST /predict               an image (a multipart file field, or the image as the body) -> the label map as an
                                indexed PNG (pixel value = class index, the classes' colours as its palette)
    POST /predict?format=json   -> {"height": H, "width": W, "fractions": {class name: fraction of the pixels}}
    GET  /health                -> {"status": "ok", "classes": [...]}

Uploads are held in memory only (see uploads.py); a refused one is a 4xx with {"detail": "<one line>"}: 413 over
the byte or pixel limit (or a decompression bomb), 415 not an image, 400 a broken image or a bad request, 422 an
image the model refuses (a fixed-size package given a photo of another shape: its one-line reason).
Predictions run one at a time in a worker thread, so /health answers while a photo is being predicted.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..data.classes import palette_for
from ..errors import UserError
from ..io.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, encode_indexed_label_png
from .uploads import UploadError, decode_upload, read_body, uploaded_file

DEFAULT_MAX_UPLOAD_BYTES = MAX_IMAGE_BYTES  # 20 MiB
DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS  # 40 megapixels: any camera photo; a decompression bomb is far above
FORMATS = ("png", "json")


class ImagePredictor(Protocol):
    """What the app predicts with (`mask2former.inference.predictor.Predictor`): called with a BGR uint8
    H x W x 3 array, it returns a result whose `labels` is the H x W class-index map."""

    class_names: Sequence[str]

    def __call__(self, image: np.ndarray) -> Any: ...


def create_app(
    predictor: ImagePredictor,
    *,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FastAPI:
    """The service's app around `predictor`; `class_names` and `palette` default to the predictor's classes and
    their colours; uploads over `max_upload_bytes` bytes or `max_pixels` pixels are refused."""
    names = list(class_names if class_names is not None else predictor.class_names)
    colours = [tuple(int(c) for c in colour) for colour in (palette if palette is not None else palette_for(names))]
    one_at_a_time = threading.Lock()

    def labels_of(image: np.ndarray) -> np.ndarray:
        with one_at_a_time:
            try:
                return np.asarray(predictor(image).labels, dtype=np.uint8)
            except UserError as error:  # an image the model cannot take (a fixed-size export's other shapes)
                raise UploadError(422, str(error)) from None

    app = FastAPI(title="trash-seg", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(UploadError)
    async def refused(request: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "classes": names}

    @app.post("/predict")
    async def predict(request: Request, format: str = "png") -> Response:
        if format not in FORMATS:
            raise UploadError(400, f"format={format!r} is not one of {', '.join(FORMATS)}: leave it out for a PNG")
        body = await read_body(request, max_upload_bytes)
        image = decode_upload(await uploaded_file(request, body), max_pixels)
        labels = await run_in_threadpool(labels_of, image)
        if format == "json":
            return JSONResponse(class_fractions(labels, names))
        return Response(encode_indexed_label_png(labels, colours), media_type="image/png")

    return app


def class_fractions(labels: np.ndarray, class_names: Sequence[str]) -> dict:
    """{"height", "width", "fractions": {class name: share of the pixels}} of a label map."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))[: len(class_names)]
    fractions = {name: round(float(count) / labels.size, 6) for name, count in zip(class_names, counts, strict=True)}
    return {"height": int(labels.shape[0]), "width": int(labels.shape[1]), "fractions": fractions}
