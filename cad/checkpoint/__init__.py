"""Weights from anywhere, through one loader (docs/weights.md).

- `weights_file(source, official_url)`: the local file of a path / http(s) or detectron2:// URL /
  official file ("" or None), downloaded once into the cache (`sources`);
- `read_weights(source, official_url)`: the object in it, read without running pickled code (`read`);
- `CadCheckpointer` / `load_checkpoint(model, source, cfg)`: a model loaded by cad's strict rule,
  official layouts converted in memory (`loader`, `layouts`);
- `read_layout(source, layout, official_url=...)` / `load_layout_weights(model, source, layout,
  official_url=...)`: a file of one official layout (e.g. a DINO ViT) converted, or loaded into a
  model strictly.
"""
from cad.checkpoint.errors import CheckpointError, DownloadError, WeightsNotFoundError
from cad.checkpoint.layouts import Layout, find_layout, get_layout, register_layout, registered_layouts
from cad.checkpoint.loader import CadCheckpointer, load_checkpoint, load_layout_weights, read_layout
from cad.checkpoint.read import read_weights
from cad.checkpoint.sources import OFFLINE_ENV, weights_file

__all__ = [
    "CadCheckpointer", "CheckpointError", "DownloadError", "Layout", "OFFLINE_ENV", "WeightsNotFoundError", "find_layout",
    "get_layout", "load_checkpoint", "load_layout_weights", "read_layout", "read_weights", "register_layout",
    "registered_layouts", "weights_file",
]
