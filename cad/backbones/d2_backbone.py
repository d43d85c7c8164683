"""DINO/DINOv2 ViTs as Detectron2 backbones: single-scale and a ViTDet-style simple feature pyramid.

Registered in `BACKBONE_REGISTRY` (set `MODEL.BACKBONE.NAME`):

- `build_vit_backbone`: the last-layer patch tokens as one map "vit" (B, C, H/s, W/s);
- `build_vit_sfp_backbone`: ViTDet's simple feature pyramid on that map (Li et al., ECCV 2022):
  per output stride, deconvolutions (up) or max-pooling (down) from the single map, then a 1x1
  and a 3x3 conv with norm; outputs "p2".."p5" (strides 4..32) and "p6" (max-pool of the last),
  for FPN-style RPN/ROI heads (Mask R-CNN, Cascade) and pixel decoders (Mask2Former).

Stride s = the patch size for /8 and /16 models. DINOv2's /14 patches would give non-integer
pyramid strides, so its input is resized by 14/16 (bilinear) and s = 16: the token grid is then
exactly (H/16, W/16). Keys (all `CAD.VIT.*`, see cad/config.py): ARCH, WEIGHTS ("" = torch.hub
cache, "random" = random init), FREEZE, DROP_PATH_RATE, DEPTH/EMBED_DIM/NUM_HEADS (0 = official;
small models for tests), PYRAMID_STRIDES, PYRAMID_OUT_CHANNELS, PYRAMID_NORM, PYRAMID_TOP_BLOCK.
"""
import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import LayerNorm2d
from torch import nn

from cad.backbones.vit import build_vit

__all__ = ["ViTBackbone", "SimpleFeaturePyramid", "build_vit_backbone", "build_vit_sfp_backbone"]


def _norm(norm: str, channels: int) -> nn.Module:
    """"LN" = LayerNorm over channels (ViTDet's choice); otherwise Detectron2's `get_norm`."""
    if norm == "LN":
        return LayerNorm2d(channels)
    return get_norm(norm, channels) or nn.Identity()


class ViTBackbone(Backbone):
    """A timm DINO/DINOv2 ViT returning its final-norm patch tokens as a map {"vit": (B, C, H/s, W/s)}."""

    def __init__(self, vit: nn.Module, freeze: bool = False) -> None:
        super().__init__()
        self.vit = vit
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.stride = 16 if self.patch_size == 14 else self.patch_size
        self.channels = int(vit.embed_dim)
        self._out_features = ["vit"]
        self._out_feature_channels = {"vit": self.channels}
        self._out_feature_strides = {"vit": self.stride}
        if freeze:
            for param in self.vit.parameters():
                param.requires_grad_(False)

    @property
    def size_divisibility(self) -> int:
        return self.stride

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x (B, 3, H, W), H and W multiples of the stride -> {"vit": (B, C, H/s, W/s)}."""
        batch, _, height, width = x.shape
        if height % self.stride or width % self.stride:
            raise ValueError(f"input {height}x{width} is not a multiple of the backbone stride {self.stride}")
        grid = (height // self.stride, width // self.stride)
        if self.stride != self.patch_size:
            x = F.interpolate(x, size=(grid[0] * self.patch_size, grid[1] * self.patch_size), mode="bilinear", align_corners=False)
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        return {"vit": tokens.transpose(1, 2).reshape(batch, self.channels, *grid)}


class SimpleFeaturePyramid(Backbone):
    """ViTDet's simple feature pyramid on a single-scale backbone's map, outputs "p{log2 stride}"."""

    def __init__(
        self,
        net: ViTBackbone,
        strides: Sequence[int] = (4, 8, 16, 32),
        out_channels: int = 256,
        norm: str = "LN",
        top_block: bool = True,
    ) -> None:
        super().__init__()
        self.net = net
        in_stride, in_channels = net.stride, net.channels
        self.stages = nn.ModuleList()
        names: List[str] = []
        for stride in strides:
            ratio = in_stride / stride
            if ratio not in (8, 4, 2, 1, 0.5, 0.25, 0.125):
                raise ValueError(f"pyramid stride {stride} is not a power-of-two multiple of the ViT stride {in_stride}")
            layers: List[nn.Module] = []
            channels = in_channels
            for step in range(int(math.log2(ratio)) if ratio > 1 else 0):
                # Up-sampling by 2 per step; ViTDet halves the channels and puts norm + GELU between.
                if step:
                    layers += [_norm(norm, channels), nn.GELU()]
                layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
                channels //= 2
            layers += [nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(int(math.log2(1 / ratio)) if ratio < 1 else 0)]
            layers += [
                Conv2d(channels, out_channels, kernel_size=1, bias=not norm, norm=_norm(norm, out_channels)),
                Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=not norm, norm=_norm(norm, out_channels)),
            ]
            self.stages.append(nn.Sequential(*layers))
            names.append(f"p{int(math.log2(stride))}")
        self.top_block = top_block
        all_strides = list(strides) + ([strides[-1] * 2] if top_block else [])
        if top_block:
            names.append(f"p{int(math.log2(all_strides[-1]))}")
        self._out_features = names
        self._out_feature_strides = dict(zip(names, all_strides))
        self._out_feature_channels = {name: out_channels for name in names}
        self._size_divisibility = max(all_strides)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x (B, 3, H, W), H and W multiples of the largest stride -> {"p2": (B, C, H/4, W/4), ...}."""
        feature = self.net(x)["vit"]
        outputs = [stage(feature) for stage in self.stages]
        if self.top_block:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return dict(zip(self._out_features, outputs))


def vit_from_cfg(cfg, arch: str) -> nn.Module:
    """The timm ViT `arch` with CAD.VIT's weights (WEIGHTS), size overrides (DEPTH, EMBED_DIM,
    NUM_HEADS; 0 = official) and DROP_PATH_RATE."""
    vit_cfg = cfg.CAD.VIT
    overrides = {
        key: value
        for key, value in (("depth", vit_cfg.DEPTH), ("embed_dim", vit_cfg.EMBED_DIM), ("num_heads", vit_cfg.NUM_HEADS))
        if value
    }
    if vit_cfg.DROP_PATH_RATE:
        overrides["drop_path_rate"] = vit_cfg.DROP_PATH_RATE
    # With MODEL.WEIGHTS (a full model checkpoint: cad.checkpoint.loader loads it strictly, ViT
    # included) the ViT's own pretrained file would be overwritten: skip reading it.
    weights = "random" if cfg.MODEL.WEIGHTS else (vit_cfg.WEIGHTS or None)
    return build_vit(arch, weights, **overrides)


def _vit_from_cfg(cfg) -> ViTBackbone:
    return ViTBackbone(vit_from_cfg(cfg, cfg.CAD.VIT.ARCH), freeze=cfg.CAD.VIT.FREEZE)


@BACKBONE_REGISTRY.register()
def build_vit_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Single-scale DINO/DINOv2 ViT backbone (output "vit")."""
    return _vit_from_cfg(cfg)


@BACKBONE_REGISTRY.register()
def build_vit_sfp_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """DINO/DINOv2 ViT + simple feature pyramid (outputs "p2".."p6" by default)."""
    vit_cfg = cfg.CAD.VIT
    return SimpleFeaturePyramid(
        _vit_from_cfg(cfg),
        strides=tuple(vit_cfg.PYRAMID_STRIDES),
        out_channels=vit_cfg.PYRAMID_OUT_CHANNELS,
        norm=vit_cfg.PYRAMID_NORM,
        top_block=vit_cfg.PYRAMID_TOP_BLOCK,
    )
