"""Registered model components (meta-architectures, ROI heads, backbones)."""
from cad.modeling import motion  # noqa: F401,E402  (registers DIOD, XMOD)
