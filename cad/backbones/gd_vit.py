"""Guided Distillation's ViT backbones: `DinoV2BaseBackbone`, `DinoV2LargeBackbone`,
`DeiTBaseBackbone`, `ViTBaseBackbone` and `ViTLargeBackbone` (official GuidedDistillation
`mask2former/modeling/backbone/{dinov2,deit,vit}.py`).

Module and parameter names are the official ones (DINOv2, DeiT: their checkpoints load one to one):

- `model`: the ViT, here cad's timm ViT (`cad.backbones.vit`), whose names are those of the official
  models: the DINOv2 torch.hub ViT (`dinov2_vitb14` / `dinov2_vitl14`; its `mask_token` deleted)
  and the DeiT torch.hub model (`deit_base_patch16_384`, itself timm's `VisionTransformer`; its
  classifier `head` deleted); the ViT-B/L of pytorch_pretrained_vit (`ViT('B_16')`), whose
  names differ (`transformer.blocks.N.attn.proj_q`, ...): its files are converted when read
  (`cad.backbones.vit`) and the modules have timm's names (Guided Distillation checkpoints with
  these backbones, none released, would need a conversion that cad does not have);
- `convs.{0..3}`: 1x1 convs from the ViT width to 128/256/512/1024 channels (res2..res5).

Forward (x (B, 3, H, W)): nearest-resize to a multiple of the patch size p (the official
`get_divisible_size`: DINOv2 (H + p - H % p, W + p - W % p), which adds p when a side is already
a multiple, as ViT-L; DeiT and ViT-B (H - H % p, W - W % p)), take the patch tokens of the last
block (after the final norm, except for ViT-B/L whose norm went with the classifier), nearest-resize the
token map to (H // s, W // s) for s = 4, 8, 16, 32, then the 1x1 conv of that level. Position
embeddings follow each official model: DINOv2 the hub rule (bicubic, `interpolate_offset` 0.1,
`cad.backbones.vit.hub_resample_pos_embed`); DeiT its `interpolate_pos_encoding` (bilinear from the
24 x 24 grid to the token grid, no antialiasing); ViT-B/L a fixed 64 x 64 grid (built for 1024-pixel
inputs), which the official code adds as it is (other inputs crash there) and cad resamples
bilinearly with corners aligned, as pytorch_pretrained_vit resizes checkpoints. `size_divisibility`
is the official one (14 for DINOv2 and ViT-B, 16 for DeiT and ViT-L); Mask2Former pads to
MODEL.MASK_FORMER.SIZE_DIVISIBILITY (32) anyway.

Weights of the ViT: CAD.VIT.WEIGHTS ("" = the official file, downloaded once into the torch.hub
checkpoint cache where the official `torch.hub.load` puts it; a path or a URL; or "random" when a
full Guided Distillation checkpoint in MODEL.WEIGHTS replaces them); CAD.VIT.DEPTH/EMBED_DIM/NUM_HEADS make small models for tests.
CAD.VIT.ARCH is not read: the backbone name fixes it.
"""
from typing import Dict

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from cad.backbones.d2_backbone import vit_from_cfg
from cad.backbones.vit import HUB_INTERPOLATE_OFFSET

__all__ = ["GDViTBackbone"]

# (output name, stride); the official 1x1 convs give 128 * stride / 4 channels.
_LEVELS = (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32))


class GDViTBackbone(Backbone):
    """ViT + one 1x1 conv per level -> {"res2": (B, 128, H/4, W/4), ..., "res5": (B, 1024, H/32, W/32)}.

    `round_up`: the DINOv2 size rule (side + p - side % p) when True, DeiT's (side - side % p) when False.
    """

    def __init__(self, vit: nn.Module, round_up: bool, size_divisibility: int):
        super().__init__()
        self.model = vit
        self.round_up = round_up
        self._size_divisibility = size_divisibility
        self.token_size = int(vit.patch_embed.patch_size[0])
        width = int(vit.embed_dim)
        self.convs = nn.ModuleList(nn.Conv2d(width, 128 * stride // 4, kernel_size=1) for _, stride in _LEVELS)
        self._out_features = [name for name, _ in _LEVELS]
        self._out_feature_strides = dict(_LEVELS)
        self._out_feature_channels = {name: 128 * stride // 4 for name, stride in _LEVELS}

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def _divisible(self, side: int) -> int:
        return side + self.token_size - side % self.token_size if self.round_up else side - side % self.token_size

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        size = (self._divisible(height), self._divisible(width))
        tokens = self.model.forward_features(F.interpolate(x, size=size))[:, self.model.num_prefix_tokens :]
        grid = (size[0] // self.token_size, size[1] // self.token_size)
        patch = tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1]).permute(0, 3, 1, 2)
        return {
            name: conv(F.interpolate(patch, size=(height // stride, width // stride)))
            for (name, stride), conv in zip(_LEVELS, self.convs)
        }


def _dinov2(cfg, arch: str) -> GDViTBackbone:
    # timm's ViT has no `mask_token`, which the official backbone deletes from the hub model.
    vit = vit_from_cfg(cfg, arch)
    vit.interpolate_offset = HUB_INTERPOLATE_OFFSET
    return GDViTBackbone(vit, round_up=True, size_divisibility=14)


@BACKBONE_REGISTRY.register()
def DinoV2BaseBackbone(cfg, input_shape: ShapeSpec) -> Backbone:  # noqa: N802 (official registry name)
    """Guided Distillation's DINOv2 ViT-B/14 backbone."""
    return _dinov2(cfg, "dinov2_vitb14")


@BACKBONE_REGISTRY.register()
def DinoV2LargeBackbone(cfg, input_shape: ShapeSpec) -> Backbone:  # noqa: N802 (official registry name)
    """Guided Distillation's DINOv2 ViT-L/14 backbone."""
    return _dinov2(cfg, "dinov2_vitl14")


@BACKBONE_REGISTRY.register()
def DeiTBaseBackbone(cfg, input_shape: ShapeSpec) -> Backbone:  # noqa: N802 (official registry name)
    """Guided Distillation's DeiT-B/16 (384) backbone; the ViT is created without its classifier."""
    vit = vit_from_cfg(cfg, "deit_base_patch16_384")
    vit.pos_embed_interpolation = "bilinear"
    return GDViTBackbone(vit, round_up=False, size_divisibility=16)


@BACKBONE_REGISTRY.register()
def ViTBaseBackbone(cfg, input_shape: ShapeSpec) -> Backbone:  # noqa: N802 (official registry name)
    """Guided Distillation's ViT-B/16 backbone (vit.py: pytorch_pretrained_vit `ViT('B_16', image_size=1024)`,
    classifier and final norm deleted, so the tokens of the last block are not normed; dropout 0.1)."""
    return GDViTBackbone(vit_from_cfg(cfg, "B_16"), round_up=False, size_divisibility=14)


@BACKBONE_REGISTRY.register()
def ViTLargeBackbone(cfg, input_shape: ShapeSpec) -> Backbone:  # noqa: N802 (official registry name)
    """Guided Distillation's ViT-L/16 backbone (vit.py `ViTLargeBackbone`, which cannot be built as
    released: see docs/guided_distillation_backbones.md); DINOv2's size rule (rounds sides up)."""
    return GDViTBackbone(vit_from_cfg(cfg, "L_16"), round_up=True, size_divisibility=16)
