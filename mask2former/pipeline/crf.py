"""DenseCRF refinement (`dense_crf`: a Gaussian and an image-based bilateral kernel, pydensecrf2), its defaults and
the checks of its parameters, for tools/ensemble_crf.py and tools/tune_crf.py.

The RGB image for the bilateral kernel is resized (area) to the probability maps' size, so sxy and srgb are in
pixels and colour levels of that size.
"""

from __future__ import annotations

import cv2
import numpy as np

from .voting import EnsembleError

# Chosen with tools/tune_crf.py on the mixed ensemble (tiny Mask2Former, UPerNet, FPN) on the sample val set and
# the real trashbag photos (see tools/ensemble_crf.py --help, benchmarks/RESULTS.md).
CRF_DEFAULTS = {"sxy": 20.0, "srgb": 5.0, "compat": 10.0, "iters": 5, "gaussian_sxy": 3.0, "gaussian_compat": 3.0}
# Floor of the probabilities before -log (float16 files hold exact zeros).
PROB_FLOOR = 1e-6


# how each `dense_crf` parameter is spelled on the command line of tools/ensemble_crf.py and tools/tune_crf.py
CRF_FLAGS = {
    "sxy": "--sxy",
    "srgb": "--srgb",
    "compat": "--compat",
    "iters": "--iters",
    "gaussian_sxy": "--gauss-sxy",
    "gaussian_compat": "--gauss-compat",
}
_POSITIVE = ("sxy", "srgb", "gaussian_sxy")


def check_crf_parameters(**parameters: float) -> None:
    """EnsembleError naming the flag when a `dense_crf` parameter is out of range: sxy, srgb and gaussian_sxy must
    be > 0 (they divide), compat, gaussian_compat and iters >= 0 (0 leaves the kernel, or the inference, out)."""
    for key, value in parameters.items():
        positive = key in _POSITIVE
        if not np.isfinite(value) or (value <= 0 if positive else value < 0):
            raise EnsembleError(f"CRF {key} ({CRF_FLAGS[key]}) {value:g}: must be {'> 0' if positive else '>= 0'}")


def dense_crf(
    probs: np.ndarray,
    image: np.ndarray,
    sxy: float = CRF_DEFAULTS["sxy"],
    srgb: float = CRF_DEFAULTS["srgb"],
    compat: float = CRF_DEFAULTS["compat"],
    iters: int = CRF_DEFAULTS["iters"],
    gaussian_sxy: float = CRF_DEFAULTS["gaussian_sxy"],
    gaussian_compat: float = CRF_DEFAULTS["gaussian_compat"],
    return_labels: bool = False,
) -> np.ndarray:
    """Fully connected CRF over K x H x W probabilities; refined probabilities (float32) or, with
    `return_labels`, their argmax (uint8).

    Unary: -log(probs). Pairwise (Potts): a Gaussian kernel (gaussian_sxy, gaussian_compat; smoothness) and a
    bilateral kernel on position and colour (sxy, srgb, compat; labels follow image edges). `image` is H' x W' x 3
    uint8, resized to H x W when it differs. Its channel order does not matter (the colour distance is isotropic).
    A compat of 0 leaves that kernel out; iters=0 returns the input probabilities renormalised.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as error:  # pragma: no cover - the dependency is pinned in requirements.txt
        raise ImportError(f"DenseCRF needs pydensecrf2 (pip install -r requirements.txt): {error}") from None
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3:
        raise EnsembleError(f"probabilities must be K x H x W, got shape {probs.shape}")
    num_classes, height, width = probs.shape
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise EnsembleError(f"the CRF's image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    check_crf_parameters(
        sxy=sxy, srgb=srgb, compat=compat, iters=iters, gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat
    )
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs, PROB_FLOOR, 1.0)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if gaussian_compat > 0:
        crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    if compat > 0:
        crf.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.ascontiguousarray(image), compat=compat)
    refined = np.asarray(crf.inference(int(iters)), dtype=np.float32).reshape(num_classes, height, width)
    return refined.argmax(axis=0).astype(np.uint8) if return_labels else refined
