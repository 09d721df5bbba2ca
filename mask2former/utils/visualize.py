"""Pictures: coloured label overlays, legends and image grids (BGR uint8, OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IGNORE_COLOR_BGR = (255, 255, 255)
# The longest side of an overlay picture: a larger photo is shrunk before blending (a 10000x10000 photo would take
# gigabytes of blending buffers for a picture no screen shows whole).
MAX_OVERLAY_SIDE = 2048


def overlay_size(height: int, width: int, max_side: int = MAX_OVERLAY_SIDE) -> tuple[int, int]:
    """(height, width) of an overlay of a height x width image: the same, or shrunk to `max_side` on its longest
    side, keeping the aspect ratio."""
    scale = max_side / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink_for_overlay(image: np.ndarray, max_side: int = MAX_OVERLAY_SIDE) -> np.ndarray:
    """The image itself when its longest side is at most `max_side`, else a copy shrunk to it (area averaging)."""
    height, width = overlay_size(*image.shape[:2], max_side)
    if (height, width) == image.shape[:2]:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def colorize(label: np.ndarray, palette_rgb: Sequence[Sequence[int]], ignore_label: int = 255) -> np.ndarray:
    """An HxW label map as a BGR image; labels outside the palette (ignore) are white."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:] = IGNORE_COLOR_BGR
    for index, (r, g, b) in enumerate(palette_rgb):
        table[index] = (b, g, r)
    return table[np.asarray(label, dtype=np.uint8)]


def overlay(
    image_bgr: np.ndarray,
    label: np.ndarray,
    palette_rgb: Sequence[Sequence[int]],
    alpha: float = 0.5,
    ignore_label: int = 255,
) -> np.ndarray:
    """Blend the coloured label map (the image's size) over the image where the label is not background; outline
    objects. An image longer than MAX_OVERLAY_SIDE is shrunk first (the label by nearest neighbour), so the picture
    is at most that long."""
    image_bgr = shrink_for_overlay(image_bgr)
    label = np.asarray(label)
    if label.shape[:2] != image_bgr.shape[:2]:
        label = cv2.resize(label.astype(np.uint8), image_bgr.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    colors = colorize(label, palette_rgb, ignore_label)
    foreground = label != 0
    blended = np.array(image_bgr, dtype=np.uint8)
    # blended where there is an object, in float64 as a whole-image blend would be (the same bytes)
    blended[foreground] = ((1 - alpha) * image_bgr[foreground] + alpha * colors[foreground]).astype(np.uint8)
    edges = cv2.morphologyEx(label.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    blended[edges] = colors[edges]
    return blended


def legend(class_names: Sequence[str], palette_rgb: Sequence[Sequence[int]], width: int = 220) -> np.ndarray:
    """A column of colour swatches with class names."""
    row = 22
    out = np.full((row * len(class_names) + 6, width, 3), 255, dtype=np.uint8)
    for index, (name, (r, g, b)) in enumerate(zip(class_names, palette_rgb, strict=True)):
        y = 4 + index * row
        cv2.rectangle(out, (6, y), (26, y + row - 6), (b, g, r), thickness=-1)
        cv2.rectangle(out, (6, y), (26, y + row - 6), (0, 0, 0), thickness=1)
        cv2.putText(
            out,
            f"{index} {name}",
            (34, y + row - 9),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return out


def grid(
    images: Sequence[np.ndarray], columns: int, tile: int = 256, captions: Sequence[str] | None = None
) -> np.ndarray:
    """Tiles resized to `tile` x `tile` in a grid, with an optional caption on each."""
    rows = max(1, -(-len(images) // columns))
    out = np.full((rows * tile, columns * tile, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        tile_image = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        if captions is not None:
            cv2.putText(
                tile_image,
                captions[index],
                (4, 16),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (0, 0, 0),
                3,
                cv2.LINE_AA,
            )
            cv2.putText(
                tile_image,
                captions[index],
                (4, 16),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
        y, x = divmod(index, columns)
        out[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile] = tile_image
    return out


def with_legend(picture: np.ndarray, legend_image: np.ndarray) -> np.ndarray:
    """The picture with the legend to its right (padded to the same height)."""
    height = max(picture.shape[0], legend_image.shape[0])
    pad = lambda a: np.pad(a, ((0, height - a.shape[0]), (0, 0), (0, 0)), constant_values=255)  # noqa: E731
    return np.hstack([pad(picture), pad(legend_image)])
