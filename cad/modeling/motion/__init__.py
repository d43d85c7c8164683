"""DIOD / xMOD slot-attention video models (registered meta-architectures `DIOD`, `DIOD3D`, `XMOD`;
the RGB network's encoder a ResNet or, with CAD.MOTION.ENCODER vit, DIOD_DINOv2's ViT) and the
checkpoint layouts `diod`, `xmod_2d`, `xmod_3d`, `diod_dinov2`, `cad_diod` (registered with cad.checkpoint)."""
from cad.modeling.motion import checkpoint_layouts
from cad.modeling.motion.meta_arch import DIOD, DIOD3D, RANGE_ARCHS, XMOD
from cad.modeling.motion.networks import SlotAttention, SlotVideoNet

__all__ = ["DIOD", "DIOD3D", "RANGE_ARCHS", "XMOD", "SlotAttention", "SlotVideoNet", "checkpoint_layouts"]
