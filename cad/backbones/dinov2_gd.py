"""Guided Distillation's DINOv2 backbones (`DinoV2BaseBackbone`, `DinoV2LargeBackbone`).

Same function and parameter names as the official GuidedDistillation
`mask2former/modeling/backbone/dinov2.py`, so its released DINOv2 checkpoints load one to one:

- `model`: the DINOv2 torch.hub ViT (`dinov2_vitb14` / `dinov2_vitl14`; its `mask_token`
  deleted), here cad's timm ViT, whose names are the hub model's; the position embedding follows
  the hub rule (`interpolate_offset` 0.1, see `cad.backbones.vit.hub_resample_pos_embed`);
- `convs.{0..3}`: 1x1 convs from the ViT width to 128/256/512/1024 channels (res2..res5).

Forward (x (B, 3, H, W)): nearest-resize to (H + 14 - H % 14, W + 14 - W % 14) (the official
`get_divisible_size`, which adds 14 when a side is already a multiple of 14), take the final-norm
patch tokens, nearest-resize the token map to (H // s, W // s) for s = 4, 8, 16, 32, then the 1x1
conv of that level. The official backbone reports `size_divisibility` 14; Mask2Former pads to
MODEL.MASK_FORMER.SIZE_DIVISIBILITY (32) anyway.

Weights of the ViT: CAD.VIT.WEIGHTS ("" = the official file, downloaded once into the torch.hub
checkpoint cache as the official code's `torch.hub.load` does; a path or a URL; or "random" when
a full Guided Distillation checkpoint in MODEL.WEIGHTS replaces them); CAD.VIT.DEPTH/EMBED_DIM/
NUM_HEADS make small models for tests. CAD.VIT.ARCH is not read: the backbone name fixes it.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from cad.backbones.d2_backbone import vit_from_cfg

__all__ = ["GDDinoV2Backbone"]

# (output name, stride); the official 1x1 convs give 128 * stride / 4 channels.
_LEVELS = (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32))
# The DINOv2 torch.hub models' position-embedding offset (dinov2/hub/backbones.py).
HUB_INTERPOLATE_OFFSET = 0.1


class GDDinoV2Backbone(Backbone):
    """DINOv2 ViT + one 1x1 conv per level -> {"res2": (B, 128, H/4, W/4), ..., "res5": (B, 1024, H/32, W/32)}."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.model = vit
        self.model.interpolate_offset = HUB_INTERPOLATE_OFFSET
        self.token_size = int(vit.patch_embed.patch_size[0])
        width = int(vit.embed_dim)
        self.convs = nn.ModuleList(nn.Conv2d(width, 128 * stride // 4, kernel_size=1) for _, stride in _LEVELS)
        self._out_features = [name for name, _ in _LEVELS]
        self._out_feature_strides = dict(_LEVELS)
        self._out_feature_channels = {name: 128 * stride // 4 for name, stride in _LEVELS}

    @property
    def size_divisibility(self) -> int:
        return 14

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        size = (height + self.token_size - height % self.token_size, width + self.token_size - width % self.token_size)
        tokens = self.model.forward_features(F.interpolate(x, size=size))[:, self.model.num_prefix_tokens :]
        grid = (size[0] // self.token_size, size[1] // self.token_size)
        patch = tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1]).permute(0, 3, 1, 2)
        return {
            name: conv(F.interpolate(patch, size=(height // stride, width // stride)))
            for (name, stride), conv in zip(_LEVELS, self.convs)
        }


def _build(cfg, arch: str) -> GDDinoV2Backbone:
    # timm's ViT has no `mask_token`, which the official backbone deletes from the hub model.
    return GDDinoV2Backbone(vit_from_cfg(cfg, arch))


@BACKBONE_REGISTRY.register()
def DinoV2BaseBackbone(cfg, input_shape: ShapeSpec) -> Backbone:  # noqa: N802 (official registry name)
    """Guided Distillation's DINOv2 ViT-B/14 backbone."""
    return _build(cfg, "dinov2_vitb14")


@BACKBONE_REGISTRY.register()
def DinoV2LargeBackbone(cfg, input_shape: ShapeSpec) -> Backbone:  # noqa: N802 (official registry name)
    """Guided Distillation's DINOv2 ViT-L/14 backbone."""
    return _build(cfg, "dinov2_vitl14")
