"""Pixel-level votes of segmentation predictions (array functions, no files).

`soft_vote` (weighted mean of K x H x W probability maps), `hard_vote` (weighted vote of H x W label maps, ties to
the first-listed model), `vote_shares`, `consensus_mask` / `consensus_write_back` (pixels on which every input
agrees keep that class after the CRF, which alone erases small objects) and `resize_probabilities`.

Shapes: all inputs of one image must share H x W; nothing is resized implicitly. `resize_probabilities` does it
when asked (ensemble_crf --size: bilinear, renormalised).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ..errors import UserError

# A label-map vote carries no confidence: the CRF's unary is the vote shares mixed with a uniform distribution.
HARD_VOTE_CONFIDENCE = 0.8


class EnsembleError(UserError, ValueError):
    """Inputs that cannot be combined; the message names the input and the image."""


def normalize_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """One non-negative weight per input (None: equal), scaled to sum to 1."""
    if weights is None:
        return np.full(count, 1.0 / count)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (count,):
        raise EnsembleError(f"{len(w)} weight(s) for {count} input(s): give one weight per input")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise EnsembleError(f"weights {list(weights)}: non-negative numbers with a positive sum")
    return w / w.sum()


def _same_shapes(arrays: Sequence[np.ndarray], what: str) -> None:
    if not arrays:
        raise EnsembleError(f"no {what} to combine")
    for index, array in enumerate(arrays[1:], start=1):
        if array.shape != arrays[0].shape:
            raise EnsembleError(f"{what} {index} has shape {array.shape}, {what} 0 {arrays[0].shape}")


def soft_vote(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean (weights normalised to sum 1) of K x H x W probability maps, float32."""
    _same_shapes(probs, "probability map")
    w = normalize_weights(weights, len(probs))
    out = np.zeros(probs[0].shape, dtype=np.float32)
    for weight, p in zip(w, probs, strict=True):
        if weight > 0:
            out += np.float32(weight) * np.asarray(p, dtype=np.float32)
    return out


def vote_shares(labels: Sequence[np.ndarray], weights: Sequence[float] | None, num_classes: int) -> np.ndarray:
    """K x H x W float32: the (normalised) weight of the inputs voting for each class at each pixel."""
    _same_shapes(labels, "label map")
    w = normalize_weights(weights, len(labels))
    shape = labels[0].shape
    pixels = np.arange(labels[0].size)
    index, values = [], []
    for weight, label in zip(w, labels, strict=True):
        flat = np.asarray(label).ravel().astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
            raise EnsembleError(f"label values must lie in [0, {num_classes}), got {flat.min()}..{flat.max()}")
        index.append(flat * flat.size + pixels)
        values.append(np.full(flat.size, weight))
    counts = np.bincount(np.concatenate(index), np.concatenate(values), minlength=num_classes * pixels.size)
    return counts.reshape(num_classes, *shape).astype(np.float32)


def hard_vote(
    labels: Sequence[np.ndarray], weights: Sequence[float] | None = None, num_classes: int | None = None
) -> np.ndarray:
    """Per pixel, the class with the largest total weight (uint8 H x W).

    Ties go to the model listed first: among the tied classes, the one voted for by the earliest input with a
    positive weight that voted for a tied class.
    """
    _same_shapes(labels, "label map")
    if num_classes is None:
        num_classes = int(max(np.max(label) for label in labels)) + 1
    w = normalize_weights(weights, len(labels))
    shares = vote_shares(labels, w, num_classes)
    # weights like 0.1 + 0.2 vs 0.3 differ in the last bits: equal within float32 rounding is a tie
    tied = shares >= shares.max(axis=0, keepdims=True) - 1e-5
    result = np.full(labels[0].shape, -1, dtype=np.int64)
    for weight, label in zip(w, labels, strict=True):
        if weight <= 0:
            continue
        label = np.asarray(label).astype(np.int64)
        take = (result < 0) & np.take_along_axis(tied, label[None], axis=0)[0]
        result[take] = label[take]
    return result.astype(np.uint8 if num_classes <= 256 else np.int64)


def hard_vote_probabilities(
    labels: Sequence[np.ndarray],
    weights: Sequence[float] | None,
    num_classes: int,
    confidence: float = HARD_VOTE_CONFIDENCE,
) -> np.ndarray:
    """Probabilities for a CRF from label maps: vote shares x confidence + (1 - confidence) / K."""
    shares = vote_shares(labels, weights, num_classes)
    return shares * np.float32(confidence) + np.float32((1.0 - confidence) / num_classes)


def consensus_mask(labels: Sequence[np.ndarray]) -> np.ndarray:
    """H x W bool: pixels where every label map holds the same class."""
    _same_shapes(labels, "label map")
    mask = np.ones(labels[0].shape, dtype=bool)
    for label in labels[1:]:
        mask &= np.asarray(label) == np.asarray(labels[0])
    return mask


def consensus_write_back(
    refined: np.ndarray, labels: Sequence[np.ndarray], agreed: np.ndarray | None = None
) -> np.ndarray:
    """`refined` (e.g. the CRF's labels) with every pixel on which all `labels` agree set to their class;
    `agreed` is their `consensus_mask` when the caller has it already."""
    mask = consensus_mask(labels) if agreed is None else agreed
    if refined.shape != mask.shape:
        raise EnsembleError(f"refined labels of shape {refined.shape}, inputs {mask.shape}")
    return np.where(mask, np.asarray(labels[0]), refined).astype(refined.dtype)


def resize_probabilities(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """K x H x W probabilities resized bilinearly to K x height x width and renormalised over K (float32)."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[1:] == (height, width):
        return probs
    # cv2 resizes at most 4 channels at once on some builds: one class at a time
    out = np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probs])
    total = out.sum(axis=0, keepdims=True)
    return out / np.maximum(total, 1e-12)
