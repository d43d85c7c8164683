"""Swin Transformer ImageNet releases (microsoft/Swin-Transformer `swin_*_patch4_window*_*.pth`,
the files of the Mask2Former / Guided Distillation Swin configs).

`{"model": state_dict}` with the names of Guided Distillation's `D2SwinTransformer`
(`patch_embed.*`, `layers.N.blocks.M.attn.relative_position_bias_table`, ...) and the classifier
(`head.*`, `norm.*`) and `attn_mask` buffers that match no backbone key. It is a backbone
initialisation: Detectron2 finds the `backbone.` prefix by suffix matching, as for the `.pkl` that
the official `tools/convert-pretrained-swin-model-to-d2.py` (cad: `tools/convert_swin_to_d2.py`)
writes from it, which MODEL.WEIGHTS takes as well.
"""
from typing import Any

from cad.checkpoint.layouts import Layout, StateDict, register_layout

_SWIN_KEY = "layers.0.blocks.0.attn.relative_position_bias_table"


def is_swin_release(obj: Any) -> bool:
    model = obj.get("model") if isinstance(obj, dict) else None
    return isinstance(model, dict) and _SWIN_KEY in model and "matching_heuristics" not in obj


def swin_to_cad(obj: Any) -> StateDict:
    return dict(obj["model"])


SWIN = register_layout(Layout(
    "swin", is_swin_release, swin_to_cad,
    "Swin ImageNet release {'model': state_dict} (swin_*_patch4_window*.pth), a backbone initialisation",
    backbone_only=True,
))
