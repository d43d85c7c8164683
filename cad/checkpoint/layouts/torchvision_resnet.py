"""torchvision ResNet files (e.g. DINO's `dino_resnet50_pretrain.pth`) in Detectron2's ResNet names.

A plain torchvision state dict, or one under `state_dict` / `model`, `module.` prefixes allowed.
The renaming is Detectron2's torchvision conversion (`conv1.` -> `stem.conv1.`, `bn1.` ->
`stem.conv1.norm.`, `layerL.B.convK.` -> `res{L+1}.B.convK.`, `bnK.` -> `convK.norm.`,
`downsample.{0,1}.` -> `shortcut.` / `shortcut.norm.`); the classifier `fc.*` and
`num_batches_tracked` are dropped. The result is a backbone initialisation: Detectron2 finds the
`backbone.bottom_up.` / `backbone.` prefix by suffix matching, as for its own `R-50.pkl`.
`tools/convert_torchvision_resnet.py` writes the same conversion as a `.pkl`.
"""
import re
from typing import Any, Dict, Optional

from cad.checkpoint.layouts import Layout, StateDict, register_layout

_RULES = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut."),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm."),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm."),
]


def resnet_state(obj: Any) -> Optional[Dict[str, Any]]:
    """The torchvision ResNet state dict in a file object (prefix `module.` removed), else None."""
    if not isinstance(obj, dict):
        return None
    state = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(state, dict):
        return None
    state = {(k[len("module."):] if str(k).startswith("module.") else k): v for k, v in state.items()}
    return state if "conv1.weight" in state and "layer1.0.conv1.weight" in state else None


def torchvision_to_detectron2(state: Dict[str, Any]) -> StateDict:
    """Rename torchvision ResNet keys to Detectron2's; KeyError for a key that is not a ResNet's."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        for pattern, repl in _RULES:
            new, count = re.subn(pattern, repl, key)
            if count:
                out[new] = value
                break
        else:
            raise KeyError(f"'{key}' is not a torchvision ResNet key")
    return out


TORCHVISION_RESNET = register_layout(
    Layout(
        name="torchvision_resnet",
        matches=lambda obj: resnet_state(obj) is not None,
        to_cad=lambda obj: torchvision_to_detectron2(resnet_state(obj)),
        description="torchvision ResNet (e.g. DINO's dino_resnet50_pretrain.pth), a backbone initialisation",
        backbone_only=True,
    )
)
