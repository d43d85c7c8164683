"""Backbones: DINO/DINOv2 ViTs on timm (feature hooks, Detectron2 wrappers) and Guided
Distillation's (Swin, DeiT, DINOv2, ViT)."""
from cad.backbones.d2_backbone import SimpleFeaturePyramid, ViTBackbone  # registers the Detectron2 backbones
from cad.backbones.gd_vit import GDViTBackbone  # registers DinoV2{Base,Large}Backbone, DeiTBaseBackbone, ViT{Base,Large}Backbone
from cad.backbones.swin import SwinBackbone  # registers D2SwinTransformer
from cad.backbones.features import ViTFeatures, extract_features, normalize_image, pad_to_patch_multiple, preprocess_lost
from cad.backbones.vit import (
    VIT_ARCHS,
    WeightsNotFoundError,
    build_vit,
    save_random_checkpoint,
)

__all__ = [
    "VIT_ARCHS",
    "GDViTBackbone",
    "SwinBackbone",
    "WeightsNotFoundError",
    "SimpleFeaturePyramid",
    "ViTBackbone",
    "ViTFeatures",
    "build_vit",
    "extract_features",
    "normalize_image",
    "pad_to_patch_multiple",
    "preprocess_lost",
    "save_random_checkpoint",
]
