"""Registered model components (meta-architectures, ROI heads, backbones)."""
