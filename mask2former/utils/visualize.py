"""Pictures: coloured label overlays, legends and image grids (BGR uint8, OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IGNORE_COLOR_BGR = (255, 255, 255)


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
    """Blend the coloured label map over the image where the label is not background; outline objects."""
    colors = colorize(label, palette_rgb, ignore_label)
    foreground = (np.asarray(label) != 0)[..., None]
    blended = np.where(foreground, (1 - alpha) * image_bgr + alpha * colors, image_bgr).astype(np.uint8)
    edges = cv2.morphologyEx(np.asarray(label, np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
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
