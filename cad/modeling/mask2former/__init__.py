"""Mask2Former for instance segmentation, as registered Detectron2 components."""
from cad.modeling.mask2former.criterion import SetCriterion
from cad.modeling.mask2former.matcher import HungarianMatcher
from cad.modeling.mask2former.meta_arch import Mask2Former, instance_inference
from cad.modeling.mask2former.ms_deform_attn import MSDeformAttn, ms_deform_attn_core
from cad.modeling.mask2former.pixel_decoder import PIXEL_DECODER_REGISTRY, MSDeformAttnPixelDecoder
from cad.modeling.mask2former.sfp import SimpleFeaturePyramid, build_m2f_vit_sfp_backbone

__all__ = [
    "HungarianMatcher",
    "MSDeformAttn",
    "MSDeformAttnPixelDecoder",
    "Mask2Former",
    "PIXEL_DECODER_REGISTRY",
    "SetCriterion",
    "SimpleFeaturePyramid",
    "build_m2f_vit_sfp_backbone",
    "instance_inference",
    "ms_deform_attn_core",
]
