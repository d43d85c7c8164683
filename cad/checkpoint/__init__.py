"""Checkpoint layouts (official files of each method) and strict loading."""
from cad.checkpoint.layouts import Layout, find_layout, register_layout, registered_layouts
from cad.checkpoint.loader import CadCheckpointer, CheckpointError, load_checkpoint, read_weights

__all__ = [
    "CadCheckpointer", "CheckpointError", "Layout", "find_layout", "load_checkpoint", "register_layout",
    "read_weights", "registered_layouts",
]
