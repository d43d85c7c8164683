"""DINO / DINOv2 ViT files in timm's names (the names of `cad.backbones.vit`'s models).

Official files (`dino_deitsmall16_pretrain.pth`, `dinov2_vits14_pretrain.pth`, ...) hold timm's
keys as they are (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.N.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}.*`, `norm.*`). DINO's full training checkpoints
(`checkpoint.pth`: `student`, `teacher`, `optimizer`, `epoch`, `args` (an argparse.Namespace),
`dino_loss`) hold the backbone as `teacher["module.backbone.*"]` (or without `module.`); the
teacher's backbone is taken, the projection head dropped. DINOv2 files add `mask_token` (unused at
inference, dropped) and `blocks.N.ls{1,2}.gamma`; with registers they hold `register_tokens` and a
`pos_embed` whose first entry belongs to the CLS token, converted as timm converts them (the CLS
position folded into `cls_token`, registers without position).

These files are not MODEL.WEIGHTS of a detector (`use_as`); `cad.backbones.vit.build_vit` loads
them strictly, asking for the layout of its architecture's family.
"""
from typing import Any, Dict, Optional

from cad.checkpoint.layouts import Layout, StateDict, register_layout

_VIT_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight")
USE_AS = "CAD.VIT.WEIGHTS (ViT backbones), CAD.DISCOVERY.WEIGHTS or tools/discover.py --weights"


def backbone_state(obj: Any) -> Optional[Dict[str, Any]]:
    """The ViT state dict of a DINO/DINOv2 file object (plain, or a DINO full checkpoint's
    teacher backbone), else None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("teacher"), dict):
        teacher = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj["teacher"].items()}
        obj = {k[len("backbone."):]: v for k, v in teacher.items() if k.startswith("backbone.")}
    return obj if all(k in obj for k in _VIT_KEYS) else None


def _family(obj: Any) -> str:
    state = backbone_state(obj)
    if state is None:
        return ""
    if "mask_token" not in state:
        return "dino"
    return "dinov2_reg" if "register_tokens" in state else "dinov2"


def dino_to_cad(obj: Any) -> StateDict:
    return dict(backbone_state(obj))


def dinov2_to_cad(obj: Any) -> StateDict:
    state = dict(backbone_state(obj))
    state.pop("mask_token")
    return state


def dinov2_reg_to_cad(obj: Any) -> StateDict:
    state = dinov2_to_cad(obj)
    pos = state.pop("pos_embed")
    state["reg_token"] = state.pop("register_tokens")
    state["cls_token"] = state["cls_token"] + pos[:, :1]
    state["pos_embed"] = pos[:, 1:]
    return state


DINO = register_layout(Layout(
    "dino", lambda o: _family(o) == "dino", dino_to_cad,
    "DINO ViT file", use_as=USE_AS,
))
DINOV2 = register_layout(Layout(
    "dinov2", lambda o: _family(o) == "dinov2", dinov2_to_cad, "DINOv2 ViT file", use_as=USE_AS,
))
DINOV2_REG = register_layout(Layout(
    "dinov2_reg", lambda o: _family(o) == "dinov2_reg", dinov2_reg_to_cad,
    "DINOv2 ViT file with registers", use_as=USE_AS,
))
