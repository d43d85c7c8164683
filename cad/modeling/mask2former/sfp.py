"""Simple feature pyramid over a plain ViT (Guided Distillation's DINOv2 backbone).

The inner ViT is any Detectron2 backbone registered under `MODEL.SFP.VIT_BACKBONE` that returns
one feature map (the last layer's normalised patch tokens, stride = patch size). As the
reference: the input is nearest-resized to a multiple of the patch size, the token map is
nearest-resized to strides 4/8/16/32 of the input and projected by 1×1 convs to
`MODEL.SFP.OUT_CHANNELS` (128/256/512/1024) as res2..res5. The ViT is fully trainable.
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

SFP_STRIDES = (4, 8, 16, 32)


class SimpleFeaturePyramid(Backbone):
    """vit: Backbone with one output of stride `patch_size`; returns res2..res5."""

    def __init__(self, vit: Backbone, out_channels: Sequence[int] = (128, 256, 512, 1024)):
        super().__init__()
        shapes = vit.output_shape()
        if len(shapes) != 1:
            raise ValueError(f"the ViT backbone must have one output feature, got {sorted(shapes)}")
        self.vit, (self.vit_feature, shape) = vit, next(iter(shapes.items()))
        self.patch_size = shape.stride
        self.names = [f"res{i + 2}" for i in range(len(SFP_STRIDES))]
        self.proj = nn.ModuleList(nn.Conv2d(shape.channels, c, 1) for c in out_channels)
        self._out_features = self.names
        self._out_feature_strides = dict(zip(self.names, SFP_STRIDES))
        self._out_feature_channels = dict(zip(self.names, out_channels))

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x (B, 3, H, W) -> {res2: (B, C2, H/4, W/4), ..., res5: (B, C5, H/32, W/32)}."""
        h, w = x.shape[-2:]
        p = self.patch_size
        size = (max(p, round(h / p) * p), max(p, round(w / p) * p))
        tokens = self.vit(F.interpolate(x, size=size, mode="nearest"))[self.vit_feature]
        return {
            name: proj(F.interpolate(tokens, size=(h // s, w // s), mode="nearest"))
            for name, s, proj in zip(self.names, SFP_STRIDES, self.proj)
        }

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]) for n in self.names}


@BACKBONE_REGISTRY.register()
def build_m2f_vit_sfp_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """SimpleFeaturePyramid around BACKBONE_REGISTRY[MODEL.SFP.VIT_BACKBONE](cfg, input_shape)."""
    name = cfg.MODEL.SFP.VIT_BACKBONE
    if name not in BACKBONE_REGISTRY:
        raise KeyError(
            f"MODEL.SFP.VIT_BACKBONE '{name}' is not a registered backbone "
            f"(registered: {sorted(k for k, _ in BACKBONE_REGISTRY)})"
        )
    return SimpleFeaturePyramid(BACKBONE_REGISTRY.get(name)(cfg, input_shape), cfg.MODEL.SFP.OUT_CHANNELS)
