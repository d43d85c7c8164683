"""Caffe2 / Detectron1 `.pkl` files (e.g. Detectron2's `ImageNetPretrained/MSRA/R-50.pkl`).

Detectron2 reads them as `{"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}`
(`cad.checkpoint.read` shapes them the same way) and renames the Caffe2 names
(`res2_0_branch2a_w`, `res_conv1_bn_s`, `fpn_inner_res5_2_sum_w`, ...) to Detectron2's
(`res2.0.conv1.weight`, `stem.conv1.norm.weight`, ...) with `convert_c2_detectron_names` when it
matches them to the model. Here the renaming is the layout's conversion, so the loader sees
Detectron2 names (its backbone shape check included) and Detectron2 matches them by suffix as
for any backbone initialisation. Detectron2's own model-zoo `.pkl` files (`{"model", "__author__"}`
with Detectron2 names) need no layout.
"""
from typing import Any

from detectron2.checkpoint.c2_model_loading import convert_c2_detectron_names

from cad.checkpoint.layouts import Layout, StateDict, register_layout


def is_caffe2(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("__author__") == "Caffe2" and isinstance(obj.get("model"), dict)


def caffe2_to_cad(obj: Any) -> StateDict:
    renamed, _ = convert_c2_detectron_names(dict(obj["model"]))
    return renamed


CAFFE2 = register_layout(
    Layout(
        name="caffe2",
        matches=is_caffe2,
        to_cad=caffe2_to_cad,
        description="Caffe2/Detectron1 .pkl (Detectron2's ImageNetPretrained/MSRA files), a backbone initialisation",
        backbone_only=True,
    )
)
