"""The trash class list and its colours, and colours for any other class list."""

from __future__ import annotations

# Label 0 is background (not in the json); labels 1..10 are the json's category ids 1..10.
TRASH_CLASSES: tuple[str, ...] = (
    "Background",
    "General trash",
    "Paper",
    "Paper pack",
    "Metal",
    "Glass",
    "Plastic",
    "Styrofoam",
    "Plastic bag",
    "Battery",
    "Clothing",
)
# RGB, the competition baseline's class colour map.
TRASH_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (192, 0, 128),
    (0, 128, 192),
    (0, 128, 64),
    (128, 0, 0),
    (64, 0, 128),
    (64, 0, 192),
    (192, 128, 64),
    (192, 192, 128),
    (64, 64, 128),
    (128, 0, 192),
)


def palette_for(class_names: list[str] | tuple[str, ...]) -> list[tuple[int, int, int]]:
    """Colours for a class list: the trash palette for trash names, a fixed generated one otherwise."""
    lookup = {name.lower(): color for name, color in zip(TRASH_CLASSES, TRASH_PALETTE, strict=True)}
    palette = []
    for index, name in enumerate(class_names):
        palette.append(lookup.get(name.lower(), _generated_color(index)))
    return palette


def _generated_color(index: int) -> tuple[int, int, int]:
    if index == 0:
        return (0, 0, 0)
    # The bit-interleaved PASCAL VOC colour map: distinct, stable colours for any class count.
    r = g = b = 0
    value = index
    for shift in range(7, -1, -1):
        r |= ((value >> 0) & 1) << shift
        g |= ((value >> 1) & 1) << shift
        b |= ((value >> 2) & 1) << shift
        value >>= 3
    return (r, g, b)
