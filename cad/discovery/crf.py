"""Dense CRF refinement of a binary mask (Kraehenbuehl & Koltun 2011) with `pydensecrf2`.

Parameters are those of CutLER's and CuVLER's `crf.py` (identical in both): 10 mean-field
iterations, a Gaussian kernel (sxy 3, compat 7) and a bilateral kernel (sxy 50, srgb 5,
compat 10); the unary is -log softmax([1 - m, m]) of the {0, 1} mask used as logits, bilinearly
resized to the image size when they differ.
"""
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["dense_crf", "crf_available"]

ITERATIONS = 10  # MAX_ITER
GAUSSIAN_SXY = 3  # POS_XY_STD
GAUSSIAN_COMPAT = 7  # POS_W
BILATERAL_SXY = 50  # Bi_XY_STD
BILATERAL_SRGB = 5  # Bi_RGB_STD
BILATERAL_COMPAT = 10  # Bi_W


def crf_available() -> bool:
    """True when `pydensecrf2` (import name `pydensecrf`) is installed."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def dense_crf(
    image: np.ndarray,
    mask: np.ndarray,
    iterations: int = ITERATIONS,
    gaussian_sxy: float = GAUSSIAN_SXY,
    gaussian_compat: float = GAUSSIAN_COMPAT,
    bilateral_sxy: float = BILATERAL_SXY,
    bilateral_srgb: float = BILATERAL_SRGB,
    bilateral_compat: float = BILATERAL_COMPAT,
) -> np.ndarray:
    """Refine `mask` (h, w) in {0, 1} on `image` RGB uint8 (H, W, 3); returns (H, W) float32 in {0, 1}."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:
        raise ImportError("dense CRF needs the 'pydensecrf2' package (pip install pydensecrf2), or use --no-crf") from e
    height, width = image.shape[:2]
    fg = torch.from_numpy(np.asarray(mask, dtype=np.float64))
    logits = torch.stack([1.0 - fg, fg])[None]
    if tuple(fg.shape) != (height, width):
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    probs = F.softmax(logits[0], dim=0).numpy()
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.require(image, np.uint8, ["C", "W"]), compat=bilateral_compat
    )
    q = np.asarray(crf.inference(iterations)).reshape(2, height, width)
    return np.argmax(q, axis=0).astype(np.float32)
