"""Mask2Former for instance segmentation, as registered Detectron2 components."""
from cad.modeling.mask2former.criterion import SetCriterion
from cad.modeling.mask2former.matcher import HungarianMatcher
from cad.modeling.mask2former.meta_arch import Mask2Former, MaskFormerHead, instance_inference
from cad.modeling.mask2former.ms_deform_attn import MSDeformAttn, ms_deform_attn_core
from cad.modeling.mask2former.pixel_decoder import PIXEL_DECODER_REGISTRY, MSDeformAttnPixelDecoder

__all__ = [
    "HungarianMatcher",
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "Mask2Former",
    "MaskFormerHead",
    "PIXEL_DECODER_REGISTRY",
    "SetCriterion",
    "instance_inference",
    "ms_deform_attn_core",
]
