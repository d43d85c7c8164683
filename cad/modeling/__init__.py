"""Registered model components (meta-architectures, ROI heads, backbones)."""
from cad.modeling import mask2former  # noqa: F401  (registers Mask2Former)
