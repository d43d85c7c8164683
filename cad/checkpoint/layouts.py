"""Registry of published checkpoint layouts and their conversion to cad's state-dict names.

A layout is recognised from the loaded file object (the dict `torch.load` returns) and converted,
in memory, into a flat state dict of cad's module names. Families register their layouts next to
their modules (DIOD/xMOD in `cad.modeling.motion`, Guided Distillation in `cad.distillation`);
`cad.checkpoint.loader` applies them when `MODEL.WEIGHTS` (or any weights argument) is loaded.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

StateDict = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """`matches(obj)` says whether a loaded checkpoint object is in this layout; `to_cad(obj, cfg)`
    returns the model state dict in cad's names (cfg: the model's frozen config, or None)."""

    name: str
    matches: Callable[[Any], bool]
    to_cad: Callable[[Any, Any], StateDict]
    description: str = ""


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
