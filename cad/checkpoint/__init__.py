"""Checkpoint layouts (official files of each method) and strict loading."""
from cad.checkpoint.layouts import Layout, find_layout, register_layout, registered_layouts

__all__ = ["Layout", "find_layout", "register_layout", "registered_layouts"]
