"""Official files written once in Detectron2's format (tools/convert_torchvision_resnet.py).

cad reads the official layouts in memory, so no conversion is needed to use them; this writes a
torchvision ResNet (e.g. DINO's `dino_resnet50_pretrain.pth`) as the Detectron2 `.pkl` that
Detectron2 itself and other tools load as a backbone initialisation (its torchvision conversion
script's format).
"""
import pickle
from pathlib import Path
from typing import Union

from cad.checkpoint.loader import read_layout
from cad.utils.io import atomic_write_bytes

__all__ = ["convert_torchvision_checkpoint"]


def convert_torchvision_checkpoint(src: Union[str, Path], dst: Union[str, Path]) -> int:
    """Write the torchvision ResNet file `src` (a path or a URL) as a Detectron2 `.pkl` at `dst`
    (numpy arrays, `matching_heuristics`), atomically; returns the number of tensors. Raises
    `CheckpointError` (one line) for a source that is not a torchvision ResNet file."""
    _, state = read_layout(str(src), "torchvision_resnet", option="torchvision ResNet")
    converted = {k: v.detach().cpu().numpy() for k, v in state.items()}
    payload = {"model": converted, "__author__": "torchvision", "matching_heuristics": True}
    atomic_write_bytes(Path(dst), pickle.dumps(payload))
    return len(converted)
