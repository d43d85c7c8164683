"""Registered model components (meta-architectures, ROI heads, backbones)."""
from cad.modeling import mask2former  # noqa: F401  (registers Mask2Former)
from cad.modeling import pseudo_labelers  # noqa: F401  (registers the LOST, MaskCut, VoteCut meta-architectures)
from cad.modeling import motion  # noqa: F401  (registers DIOD, XMOD)
from cad.modeling import roi_heads  # noqa: F401  (registers PseudoLabel* ROI and mask heads)
from cad.modeling.res5_extra_norm import Res5ROIHeadsExtraNorm  # noqa: F401  (registers the ROI head)
