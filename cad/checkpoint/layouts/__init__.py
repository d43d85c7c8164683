"""Official checkpoint layouts: recognised in a loaded file and converted, in memory, to cad's names.

One module per family, each registering its layouts with `register_layout` when imported (this
package imports them all):

- `detectron2_pkl`: Caffe2 / Detectron1 `.pkl` backbones (Detectron2's ImageNet `R-50.pkl` files);
- `dino`: DINO / DINOv2 ViT files (official torch.hub files, DINO full training checkpoints);
- `gd_vit`: the DeiT and PyTorch-Pretrained-ViT files of Guided Distillation's ViT backbones;
- `torchvision_resnet`: torchvision ResNet files (e.g. DINO's ResNet-50) as backbone initialisations;
- `guided_distillation`: Guided Distillation's stage-1 / stage-2 `EnsembleTSModel` files;
- `motion`: DIOD and xMOD slot-attention files;
- `swin`: Swin Transformer ImageNet releases (Guided Distillation's Swin backbones): backbone initialisation.

A `Layout` only converts: `to_cad(obj)` maps the loaded file object to a flat state dict in cad's
names, without reading the config or another file. What depends on the config is declared and
done by the loader (`cad.checkpoint.loader`): which member of a multi-model file to keep
(`members`, `member_key`), the meta-architectures that take the file (`archs`), config values the
file's network needs (`requires`), a second file (`companion`), resolution-tied tensors that may
start anew (`resolution_tied`).

Adding a layout (docs/weights.md): write `cad/checkpoint/layouts/<family>.py` with `matches` and
`to_cad` (pure functions of the file object; random-init files in the official layout in a test),
register it there, and import the module at the bottom of this file.
"""
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

__all__ = ["Companion", "Layout", "StateDict", "find_layout", "get_layout", "register_layout", "registered_layouts"]


@dataclass(frozen=True)
class Companion:
    """A second file that fills the model keys a layout's file leaves empty (xMOD's 3D network).

    key: the config key that names it; layout: the registered layout it may be in; prefixes: the
    keys taken from it (a cad checkpoint holding keys with these prefixes is taken as well)."""

    key: str
    layout: str
    prefixes: Tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """One official file format.

    name: short name (in log and error lines); description: what the file is and who writes it.
    matches(obj): whether a loaded file object is in this layout.
    to_cad(obj): the state dict in cad's names (names converted only; no config, no other file).
    members: ((name, key prefix), ...) of a file holding several models (the first is the default);
        the loader keeps one, prefix stripped: the caller's choice, else the config's `member_key`.
    archs: the MODEL.META_ARCHITECTUREs that take the file as MODEL.WEIGHTS (empty: any).
    requires: ((config key, accepted values), ...) that the file's network needs.
    companion: a second file (`Companion`), read by the loader when the model has keys this file
        does not fill and the config names one.
    use_as: for a file that is not a full model for MODEL.WEIGHTS: the option that takes it.
    backbone_only: a backbone initialisation (Detectron2's name matching), not a full model.
    resolution_tied: (config key, regex) of model keys whose shape follows the input size; with the
        key True, such a tensor of another shape in the file is left out and keeps the model's
        initialisation (a declared partial initialisation, logged).
    """

    name: str
    matches: Callable[[Any], bool]
    to_cad: Callable[[Any], StateDict]
    description: str = ""
    members: Tuple[Tuple[str, str], ...] = ()
    member_key: str = ""
    archs: Tuple[str, ...] = ()
    requires: Tuple[Tuple[str, Tuple[Any, ...]], ...] = ()
    companion: Optional[Companion] = None
    use_as: str = ""
    backbone_only: bool = False
    resolution_tied: Optional[Tuple[str, str]] = None

    def is_resolution_tied(self, key: str) -> bool:
        return self.resolution_tied is not None and re.fullmatch(self.resolution_tied[1], key) is not None


_LAYOUTS: List[Layout] = []


def register_layout(layout: Layout) -> Layout:
    """Add `layout` (a name registered twice replaces the earlier one: module reloads)."""
    _LAYOUTS[:] = [x for x in _LAYOUTS if x.name != layout.name]
    _LAYOUTS.append(layout)
    return layout


def registered_layouts() -> List[Layout]:
    return list(_LAYOUTS)


def find_layout(obj: Any) -> Optional[Layout]:
    """The first registered layout whose `matches` accepts `obj`, else None."""
    for layout in _LAYOUTS:
        if layout.matches(obj):
            return layout
    return None


def get_layout(name: str) -> Layout:
    """The registered layout `name` (KeyError naming the known ones otherwise)."""
    for layout in _LAYOUTS:
        if layout.name == name:
            return layout
    raise KeyError(f"no layout '{name}' (registered: {', '.join(x.name for x in _LAYOUTS)})")


from cad.checkpoint.layouts import (  # noqa: E402,F401,I001  (register)
    detectron2_pkl, dino, gd_vit, guided_distillation, motion, swin, torchvision_resnet,
)
