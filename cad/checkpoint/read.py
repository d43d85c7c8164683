"""Reading a weights file without running pickled code.

`read_weights(source)` is the one reader of weights files in cad: the source is resolved by
`cad.checkpoint.sources.weights_file` (path, URL, official file), then read on the CPU:

- `.pkl` files (Detectron2 model zoo, Caffe2/Detectron1 and converted-backbone pickles) with a
  restricted unpickler that builds only containers, numpy arrays and scalars and torch tensors
  (read with `weights_only`), and shaped as
  Detectron2's `DetectionCheckpointer._load_file` shapes them (a Caffe2 file becomes
  `{"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}`); `.pyth` (pycls) files
  likewise (`{"model": model_state, "__author__": "pycls", "matching_heuristics": True}`);
- every other file with `torch.load(map_location="cpu", weights_only=True)` (files saved from GPU
  tensors load on any machine), with the extra types that official files carry allowed
  explicitly: `argparse.Namespace` (DINO's full training checkpoints pickle the run's arguments
  next to the `teacher` weights) and numpy arrays/scalars.

A file that pickles anything else (a class, a function) is refused with one line naming it; with
the environment variable `CAD_TRUST_PICKLE=1` it is read with full unpickling instead (only for
files you trust: unpickling can run any code). A file that is not a checkpoint (text, image,
truncated) is a `CheckpointError`.
"""
import argparse
import codecs
import collections
import io
import logging
import os
import pickle
import re
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from cad.checkpoint.errors import CheckpointError
from cad.checkpoint.sources import weights_file

logger = logging.getLogger(__name__)

__all__ = ["TRUST_ENV", "read_weights"]

TRUST_ENV = "CAD_TRUST_PICKLE"


def _numpy_globals() -> Dict[str, Any]:
    """Pickle names -> the numpy objects that rebuild arrays and scalars (numpy 1 and 2 names)."""
    core = np._core if hasattr(np, "_core") else np.core
    out: Dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for prefix in ("numpy.core", "numpy._core"):
        out[f"{prefix}.multiarray._reconstruct"] = core.multiarray._reconstruct
        out[f"{prefix}.multiarray.scalar"] = core.multiarray.scalar
        out[f"{prefix}.numeric._frombuffer"] = core.numeric._frombuffer
    for name in dir(getattr(np, "dtypes", None)):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            out[f"numpy.dtypes.{name}"] = cls
    return out


def _storage_from_bytes(data: bytes) -> Any:
    """`torch.storage._load_from_bytes` (how plain pickle stores a torch storage), without unpickling code."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# The only globals a weights pickle may name: argparse.Namespace (DINO full checkpoints), numpy
# arrays and scalars, the two helpers Python's pickles of bytes and ordered dicts use, and torch
# tensors pickled with plain pickle (Mask2Former's converted Swin .pkl files).
_ALLOWED: Dict[str, Any] = {
    "argparse.Namespace": argparse.Namespace,
    "_codecs.encode": codecs.encode,
    "collections.OrderedDict": collections.OrderedDict,
    **_numpy_globals(),
}
# Only in .pkl files: torch.load reads tensors itself.
_PICKLE_ALLOWED: Dict[str, Any] = {
    **_ALLOWED,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch.storage._load_from_bytes": _storage_from_bytes,
}


class _Forbidden(pickle.UnpicklingError):
    pass


class _WeightsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _PICKLE_ALLOWED.get(f"{module}.{name}")
        if obj is None:
            raise _Forbidden(f"{module}.{name}")
        return obj


def _trusted() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def _refuse(path: str, names: List[str]) -> CheckpointError:
    return CheckpointError(
        f"'{path}' pickles {', '.join(sorted(set(names)))} besides weights: cad reads weights files without running "
        f"pickled code; set {TRUST_ENV}=1 to read it anyway if you trust the file"
    )


def _load_pickle(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            return _WeightsUnpickler(f, encoding="latin1").load()
        except _Forbidden as e:
            if not _trusted():
                raise _refuse(path, [str(e)]) from None
    logger.warning("'%s': full unpickling (%s=1)", path, TRUST_ENV)
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _torch_safe_globals() -> List[Any]:
    return [(obj, name) for name, obj in _ALLOWED.items()]


def _load_torch(path: str) -> Any:
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if not unsafe:  # not a pickle of weights at all: "cannot read" (read_weights)
            raise
        if not _trusted():
            raise _refuse(path, unsafe) from None
    logger.warning("'%s': full unpickling (%s=1)", path, TRUST_ENV)
    return torch.load(path, map_location="cpu", weights_only=False)


def _detectron2_pkl(data: Any) -> Any:
    """Detectron2's shaping of a `.pkl` object (`DetectionCheckpointer._load_file`)."""
    if not isinstance(data, dict) or ("model" in data and "__author__" in data):
        return data  # Detectron2 model-zoo format, or not a checkpoint (the layout step says so)
    if "blobs" in data:  # Caffe2 detection models; ImageNet models are flat
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def _pycls(data: Any, path: str) -> Any:
    if not isinstance(data, dict) or "model_state" not in data:
        raise CheckpointError(f"'{path}' is not a pycls checkpoint (a .pyth file holds {{'model_state': ...}})")
    state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
    return {"model": state, "__author__": "pycls", "matching_heuristics": True}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def read_weights(source: Optional[str], official_url: str = "", *, torch_hub: bool = False, option: str = "") -> Any:
    """The object stored in the weights source `source` (a path, an http(s)/detectron2 URL, or
    ""/None for `official_url`; `cad.checkpoint.sources.weights_file`), read safely on the CPU
    (module docstring). Raises `CheckpointError` (one line) when it cannot be had or read."""
    path = weights_file(source, official_url, torch_hub=torch_hub, option=option)
    try:
        if path.endswith(".pkl"):
            return _detectron2_pkl(_load_pickle(path))
        if path.endswith(".pyth"):
            return _pycls(_load_torch(path), path)
        return _load_torch(path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  any reader failure means "not a checkpoint"
        raise CheckpointError(f"cannot read '{path}' as a checkpoint ({type(e).__name__}: {_first_line(e)})") from e
