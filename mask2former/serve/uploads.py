"""An uploaded image, from the request to pixels, entirely in memory: the body read up to a byte limit, the file
part of a multipart form, the header checked against a pixel limit before anything is decoded, the whole file
decoded once to refuse a truncated one, then the pixels read by the project's one image reader.

Every refusal is an `UploadError` carrying the HTTP status and a one-line message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from ..io.images import (
    BrokenImageError,
    ImageBytesError,
    ImageTooLargeError,
    NotAnImageError,
    decode_image_limited,
    too_many_bytes,
)

# What a request may carry beyond the limit and still be read to its end (and discarded), so that the client
# gets the 413 instead of a connection reset while it is still sending.
DRAIN_BYTES = 64 * 2**20


class UploadError(Exception):
    """An upload the service refuses: `status` (4xx) and a one-line `message` saying what to send instead."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes (413 beyond, the rest of the body read and discarded)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
        raise _too_big(int(declared), limit)
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
        elif size > limit + DRAIN_BYTES:
            break
    if size > limit:
        raise _too_big(size, limit)
    return bytes(body)


def _too_big(size: int, limit: int) -> UploadError:
    return UploadError(413, str(too_many_bytes(size, limit)))


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser whose file parts never roll over to a temporary file on disk: the spool holds
    up to the whole body, which `read_body` has bounded already."""

    def __init__(self, request: Request, body: bytes) -> None:
        super().__init__(request.headers, _once(body), max_files=1, max_fields=16, max_part_size=64 * 1024)
        self.spool_max_size = len(body) + 1


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def uploaded_file(request: Request, body: bytes) -> bytes:
    """The image bytes of a request: the file part of a multipart form (any field name), or the body itself for
    any other content type (an image sent as it is)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return body
    try:
        form = await _InMemoryParser(request, body).parse()
    except MultiPartException as error:
        raise UploadError(400, f"the multipart form cannot be read ({error.message}): send one image file") from None
    files = [value for value in form.values() if isinstance(value, UploadFile)]
    if not files:
        raise UploadError(400, "the multipart form holds no file: send the image as a file field (-F file=@photo.jpg)")
    return await files[0].read()


# The HTTP status of each refusal of the image reader: too large, not an image, broken.
_STATUS = ((ImageTooLargeError, 413), (NotAnImageError, 415), (BrokenImageError, 400))


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """The uploaded image as a BGR uint8 H x W x 3 array, as `read_image` reads a file
    (`mask2former.io.images.decode_image_limited`); refuses a non-image (415), an image over `max_pixels` pixels by
    its header, before decoding (413), and a broken or truncated one (400)."""
    try:
        return decode_image_limited(data, max_pixels, max_bytes=None)  # read_body has bounded the bytes
    except ImageBytesError as error:
        status = next(code for kind, code in _STATUS if isinstance(error, kind))
        raise UploadError(status, str(error)) from None
