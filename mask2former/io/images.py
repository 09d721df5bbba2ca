"""The one reader of images and label maps (and the label-map PNG writers); every module reads these files through
here.

Frame rule: an image is used as its pixels are stored in the file. The EXIF orientation tag is never applied
(OpenCV would rotate the pixels by it; here it is ignored), because COCO annotations are given in the stored
pixel frame: the json's width/height are the stored image's, and its polygons and RLEs are drawn on the stored
pixels (pycocotools and the competition's own tools work the same way). Images, label maps, predictions and
overlays therefore all share one frame, whatever a photo viewer shows. A photo whose tag would rotate or mirror
it is logged once per process (later ones are counted, `oriented_images_seen()`), and registration counts them
per json (`mask2former.data.coco_semantic`), so a user knows the labels follow the stored pixels.

Readers raise `ReadError` (missing, unreadable, not an image, a symlink loop, a name too long) or `LabelMapError`
(a PNG that is not a label map, or not of the expected size), both naming the file. Image bytes held in memory (an
upload) are decoded by `decode_image_limited`, within a byte and a pixel limit, raising an `ImageBytesError`.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError, filesystem_message
from .files import atomic_write_bytes

logger = logging.getLogger(__name__)

# the files taken as images when a folder or a pattern is listed (any case)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

EXIF_ORIENTATION_TAG = 0x0112
# What a photo viewer does to the stored pixels for each EXIF orientation value (1: nothing).
ORIENTATION_MEANING = {
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "mirrored and rotated 90 degrees",
    6: "rotated 90 degrees clockwise",
    7: "mirrored and rotated 270 degrees",
    8: "rotated 90 degrees counter-clockwise",
}
_IMAGE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
_EXIF_SCAN_BYTES = 1 << 16  # EXIF sits in a JPEG's first segment (at most 64 KiB)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE_COLOR_TYPE = 3  # the colour-type byte of a PNG's IHDR (offset 25): an indexed image
_oriented_seen: Counter = Counter()


class ReadError(UserError, OSError):
    """A file that is missing, unreadable, or not what it should be (an image, a PNG); the message names it."""


class LabelMapError(UserError, ValueError):
    """A label map that is not a single-channel 8-bit PNG, or not its image's size; the message names it."""


def _read_bytes(path: str | Path, what: str) -> np.ndarray:
    try:
        return np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise ReadError(f"cannot read {what} {path}: no such file") from None
    except IsADirectoryError:
        raise ReadError(f"cannot read {what} {path}: it is a folder") from None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            raise ReadError(f"{what} {filesystem_message(error, path, 'reading')}") from None
        raise ReadError(f"cannot read {what} {path}: {error.strerror or error}") from None


def require_file(path: str | Path, what: str) -> None:
    """FileNotFoundError ("`what` not found: path") unless `path` is a file; a symlink loop or a name too long on
    the way is a ReadError saying so."""
    try:
        found = stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        found = False
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            raise ReadError(f"{what} {filesystem_message(error, path, 'reading')}") from None
        raise
    if not found:
        raise FileNotFoundError(f"{what} not found: {path}")


def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 HxWx3 image, its pixels as stored (the EXIF orientation tag is not applied; see the module)."""
    return decode_image(_read_bytes(path, "image"), str(path))


def decode_image(data: bytes | np.ndarray, name: str) -> np.ndarray:
    """`read_image` of a file's bytes already in memory (an upload); `name` is how messages call it."""
    if not isinstance(data, np.ndarray):
        data = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(data, _IMAGE_FLAGS) if data.size else None
    if image is None:
        raise ReadError(f"cannot read image {name} (empty, truncated or not an image)")
    orientation = _orientation_of_bytes(data)
    if orientation not in (0, 1):
        _note_oriented(name, orientation)
    return image


# What an image held in memory (an upload to the HTTP service or the viewer) may be: any camera photo fits.
MAX_IMAGE_BYTES = 20 * 2**20
MAX_IMAGE_PIXELS = 40_000_000  # 40 megapixels; a decompression bomb is far above


class ImageBytesError(UserError, ValueError):
    """Image bytes in memory that are refused; the one-line message says what to send instead. The subclass says
    why: too large, not an image, or broken."""


class ImageTooLargeError(ImageBytesError):
    """Over the byte or pixel limit (the pixels read from the header), or a decompression bomb."""


class NotAnImageError(ImageBytesError):
    """Not an image, or an image of a kind the reader does not decode."""


class BrokenImageError(ImageBytesError):
    """Empty, broken or truncated image bytes."""


def too_many_bytes(size: int, limit: int) -> ImageTooLargeError:
    """The refusal of `size` bytes of image over a `limit` of bytes."""
    return ImageTooLargeError(
        f"the upload is {size / 2**20:.1f} MiB, over the limit of {limit / 2**20:.1f} MiB: send a smaller image"
    )


def decode_image_limited(
    data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int | None = MAX_IMAGE_BYTES
) -> np.ndarray:
    """Image bytes in memory as a BGR uint8 H x W x 3 array, as `read_image` reads a file. Refuses, before
    decoding, bytes over `max_bytes` (None: no byte limit) and an image whose header declares over `max_pixels`
    pixels (`ImageTooLargeError`); a non-image (`NotAnImageError`); an empty, broken or truncated one (the whole
    file is decoded once: `BrokenImageError`)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise too_many_bytes(len(data), max_bytes)
    if not data:
        raise BrokenImageError("the upload is empty: send an image file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            (width, height), kind = image.size, image.format or "unknown"
            if width * height <= max_pixels:
                image.load()  # decodes it all: a truncated or corrupt file fails here
    except Image.DecompressionBombError:  # PIL's own check, at twice Image.MAX_IMAGE_PIXELS
        raise ImageTooLargeError(
            f"the image declares over {2 * Image.MAX_IMAGE_PIXELS} pixels, over the limit of {max_pixels} pixels (a "
            "decompression bomb?): send a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise NotAnImageError("the upload is not an image (PNG, JPEG, BMP, TIFF, WebP): send an image file") from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BrokenImageError(f"the image is broken or truncated ({reason}): send the whole file") from None
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels, over the limit of {max_pixels} pixels: send a smaller image"
        )
    try:
        return decode_image(data, "upload")
    except ReadError:
        raise NotAnImageError(f"the upload is an image of a kind that is not read here ({kind})") from None


def exif_orientation(path: str | Path) -> int:
    """The image's EXIF orientation value (1..8), 1 when it has none or the file has no EXIF."""
    return _orientation_of_bytes(_read_bytes(path, "image"))


def orientation_of(image: Image.Image) -> int:
    """The EXIF orientation value of an opened PIL image (1 when absent), without decoding its pixels."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1  # a PNG's getexif() would decode the whole image to look for a late eXIf chunk
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, TypeError):  # a broken EXIF block: the pixels still decode
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def describe_orientation(value: int) -> str:
    return f"EXIF orientation tag {value} ({ORIENTATION_MEANING.get(value, 'unknown')} by photo viewers)"


def oriented_images_seen() -> int:
    """How many images read by this process carried an orientation tag that rotates or mirrors them."""
    return sum(_oriented_seen.values())


def _orientation_of_bytes(data: np.ndarray) -> int:
    head = data[:_EXIF_SCAN_BYTES].tobytes()
    if b"Exif\x00\x00" not in head and b"eXIf" not in head:
        return 1  # the common case, without opening the file a second time
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            return orientation_of(image)
    except (OSError, SyntaxError, ValueError):
        return 1


def _note_oriented(path: str, orientation: int) -> None:
    first = not _oriented_seen
    _oriented_seen[orientation] += 1
    if first:
        logger.warning(
            "%s carries %s; its pixels are used as stored, the frame in which COCO annotations (the json's "
            "width/height and polygons) are given; further such images are counted, not logged",
            path,
            describe_orientation(orientation),
        )


def read_label(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A uint8 HxW label map from a single-channel 8-bit PNG, or from an indexed (palette) PNG: its indices, as
    `write_indexed_label_png` writes them; `expected_hw` (its image's height, width) is checked when given."""
    data = _read_bytes(path, "label map")
    label = _decode_label(data) if data.size else None
    if label is None:
        raise ReadError(f"cannot read label map {path} (empty, truncated or not an image)")
    if label.ndim != 2 or label.dtype != np.uint8:
        channels = 1 if label.ndim == 2 else label.shape[2]
        raise LabelMapError(
            f"label map {path} must be a single-channel or indexed 8-bit PNG of class indices, got {channels} "
            f"channel(s) of {label.dtype}"
            + ("; colour masks: convert them with tools/convert_dataset.py --from png-masks" if channels > 1 else "")
        )
    if expected_hw is not None and label.shape != tuple(expected_hw):
        raise LabelMapError(
            f"label map {path} is {label.shape[1]}x{label.shape[0]}, its image is {expected_hw[1]}x{expected_hw[0]}"
        )
    return label


def read_label_at(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A label map reduced (or enlarged) to `shape` by nearest neighbour, as predictions are scored."""
    label = read_label(path)
    if label.shape != tuple(shape):
        label = cv2.resize(label, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return label


def write_label_png(path: str | Path, label: np.ndarray) -> None:
    """Write a uint8 label map as a PNG, atomically."""
    ok, encoded = cv2.imencode(".png", np.asarray(label, dtype=np.uint8))
    if not ok:
        raise OSError(f"could not encode the label map {path}")
    atomic_write_bytes(path, encoded.tobytes())


def write_indexed_label_png(path: str | Path, label: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Write a uint8 label map as an indexed PNG (PIL mode "P", 8 bits) whose colour k is `palette[k]` (RGB), so
    any image viewer shows it in colour; `read_label` reads back the class indices. Atomically."""
    atomic_write_bytes(path, encode_indexed_label_png(label, palette))


def encode_indexed_label_png(label: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """The bytes of `write_indexed_label_png`'s file (the HTTP service sends them without a file)."""
    label = np.ascontiguousarray(label, dtype=np.uint8)
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    colors = [int(channel) for color in palette for channel in color][: 256 * 3]
    image.putpalette(colors + [0] * (256 * 3 - len(colors)))  # 256 entries: an 8-bit PNG whatever the class count
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return encoded.getvalue()


def _decode_label(data: np.ndarray) -> np.ndarray | None:
    """The label map of a PNG's bytes (None: not decodable). OpenCV would expand an indexed PNG to its colours, so
    one is decoded by PIL, to its indices; anything else by OpenCV, unchanged (no EXIF rotation)."""
    head = data[:26].tobytes()
    if head.startswith(_PNG_SIGNATURE) and len(head) == 26 and head[25] == _PNG_PALETTE_COLOR_TYPE:
        try:
            with Image.open(io.BytesIO(data.tobytes())) as image:
                return np.asarray(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            return None
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
