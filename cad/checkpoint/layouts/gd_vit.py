"""The other ViT files of Guided Distillation's backbones, in timm's names (`cad.backbones.vit`):

- ``deit``: facebookresearch/deit's release (`deit_base_patch16_384-8de9b5d1.pth`, what the
  hubconf `deit_base_patch16_384` loads for Guided Distillation's DeiTBaseBackbone):
  `{"model": state_dict}` with timm's keys and the ImageNet classifier `head.*`, which the
  official backbone deletes after loading (dropped here);
- ``ppvit``: PyTorch-Pretrained-ViT's files (`B_16.pth`, Guided Distillation's ViT{Base,Large}Backbone):
  their own names (`class_token`, `positional_embedding.pos_embedding`, `patch_embedding.*`,
  `transformer.blocks.N.{attn.proj_q,proj_k,proj_v,proj,norm1,norm2,pwff.fc1,pwff.fc2}.*`), q/k/v
  concatenated into timm's `qkv`, the classifier (`fc`, `pre_logits`, `norm`) dropped, and the
  224-pixel position grid resized to the 64 x 64 grid of `ViT(name, image_size=1024)`, as
  `pytorch_pretrained_vit`'s loader resizes it (`resize_positional_embedding_`).

Both are `use_as` the ViT options (CAD.VIT.WEIGHTS), not a detector's MODEL.WEIGHTS.
"""
import math
import re
from typing import Any, Dict

import torch
import torch.nn.functional as F

from cad.checkpoint.layouts import Layout, StateDict, register_layout
from cad.checkpoint.layouts.dino import USE_AS

_VIT_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight")
_CLASSIFIER = ("head.weight", "head.bias")
# Guided Distillation builds its pytorch_pretrained_vit backbones at image_size 1024, patch 16.
PPVIT_GRID = 1024 // 16


def _deit_state(obj: Any) -> Dict[str, Any]:
    model = obj.get("model") if isinstance(obj, dict) else None
    return model if isinstance(model, dict) else {}


def is_deit(obj: Any) -> bool:
    state = _deit_state(obj)
    return all(k in state for k in _VIT_KEYS + _CLASSIFIER)


def deit_to_cad(obj: Any) -> StateDict:
    return {k: v for k, v in _deit_state(obj).items() if k not in _CLASSIFIER}


def ppvit_resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """pytorch_pretrained_vit's `resize_positional_embedding_`: (1, 1 + M*M, C) -> (1, 1 + grid*grid, C),
    the class position kept and the (M, M) grid resized linearly with corners aligned
    (`scipy.ndimage.zoom(order=1)`), i.e. bilinear with align_corners=True."""
    m = int(math.sqrt(pos_embed.shape[1] - 1))
    patch = pos_embed[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(grid, grid), mode="bilinear", align_corners=True)
    return torch.cat((pos_embed[:, :1].float(), patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)), dim=1)


_PPVIT_RENAMES = (
    (r"^class_token$", "cls_token"),
    (r"^positional_embedding\.pos_embedding$", "pos_embed"),
    (r"^patch_embedding\.", "patch_embed.proj."),
    (r"^transformer\.blocks\.(\d+)\.proj\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.blocks\.(\d+)\.pwff\.", r"blocks.\1.mlp."),
    (r"^transformer\.blocks\.(\d+)\.(norm[12])\.", r"blocks.\1.\2."),
)
_PPVIT_QKV = re.compile(r"^transformer\.blocks\.(\d+)\.attn\.proj_q\.(weight|bias)$")


def is_ppvit(obj: Any) -> bool:
    return isinstance(obj, dict) and "class_token" in obj and "positional_embedding.pos_embedding" in obj


def ppvit_to_cad(obj: Any) -> StateDict:
    """pytorch_pretrained_vit names -> timm's (module docstring)."""
    out = {}
    for key, value in obj.items():
        if key.split(".")[0] in ("fc", "pre_logits", "norm") or ".attn.proj_" in key:
            continue
        for pattern, repl in _PPVIT_RENAMES:
            key, count = re.subn(pattern, repl, key)
            if count:
                break
        out[key] = value
    for key in obj:
        match = _PPVIT_QKV.match(key)
        if match:
            parts = [obj[key.replace("proj_q", f"proj_{x}")] for x in "qkv"]
            out[f"blocks.{match[1]}.attn.qkv.{match[2]}"] = torch.cat(parts, dim=0)
    out["pos_embed"] = ppvit_resample_pos_embed(out["pos_embed"], PPVIT_GRID)
    return out


DEIT = register_layout(Layout(
    "deit", is_deit, deit_to_cad, "DeiT release {'model': ViT with its classifier head.*}", use_as=USE_AS,
))
PPVIT = register_layout(Layout(
    "ppvit", is_ppvit, ppvit_to_cad, "PyTorch-Pretrained-ViT file (B_16.pth, L_16.pth)", use_as=USE_AS,
))
