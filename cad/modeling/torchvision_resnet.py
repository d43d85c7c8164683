"""Torchvision-layout ResNet checkpoints (e.g. DINO's ResNet-50) -> Detectron2's key layout.

Writes a `.pkl` that Detectron2's `DetectionCheckpointer` loads with its name-matching
heuristics (the `backbone.` prefix is found automatically), as Detectron2's own
torchvision conversion script does.
"""
import pickle
import re
from pathlib import Path
from typing import Dict, Union

import torch

from cad.utils.io import atomic_write_bytes

__all__ = ["torchvision_to_detectron2", "convert_torchvision_checkpoint"]

_RULES = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut."),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm."),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm."),
]


def torchvision_to_detectron2(state: Dict[str, torch.Tensor]) -> Dict[str, "numpy.ndarray"]:  # noqa: F821
    """Rename torchvision ResNet keys to Detectron2's (numpy arrays); the `fc` classifier is dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new = key
        for pattern, repl in _RULES:
            new, count = re.subn(pattern, repl, new)
            if count:
                break
        else:
            raise KeyError(f"'{key}' is not a torchvision ResNet key")
        out[new] = value.detach().cpu().numpy()
    return out


def convert_torchvision_checkpoint(src: Union[str, Path], dst: Union[str, Path]) -> int:
    """Convert a torchvision ResNet file (plain or {"state_dict"/"model": ...}) to a Detectron2 pkl.

    Raises OSError when `src` cannot be read, ValueError when it is not a checkpoint dict, KeyError
    for a key that is not a torchvision ResNet key.
    """
    try:
        state = torch.load(str(src), map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise ValueError(f"'{src}' is not a PyTorch checkpoint, or cut short ({type(e).__name__})") from e
    if not isinstance(state, dict):
        raise ValueError(f"'{src}' holds a {type(state).__name__}, not a state dict")
    state = state.get("state_dict", state.get("model", state))
    state = {k.replace("module.", "", 1): v for k, v in state.items()}
    converted = torchvision_to_detectron2(state)
    payload = {"model": converted, "__author__": "torchvision", "matching_heuristics": True}
    atomic_write_bytes(Path(dst), pickle.dumps(payload))
    return len(converted)
