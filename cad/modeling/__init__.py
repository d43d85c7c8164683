"""Registered model components (meta-architectures, ROI heads, backbones)."""
from cad.modeling import roi_heads  # noqa: F401  (registers PseudoLabel* ROI and mask heads)
