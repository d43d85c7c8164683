"""DIOD / xMOD slot-attention video models (registered meta-architectures `DIOD`, `XMOD`; ResNet or,
with CAD.MOTION.ENCODER vit, DIOD_DINOv2's ViT encoder) and the official checkpoint layouts `diod`,
`xmod_2d`, `xmod_3d`, `diod_dinov2` (registered with cad.checkpoint)."""
from cad.modeling.motion import checkpoint_layouts
from cad.modeling.motion.meta_arch import DIOD, XMOD
from cad.modeling.motion.networks import SlotAttention, SlotVideoNet

__all__ = ["DIOD", "XMOD", "SlotAttention", "SlotVideoNet", "checkpoint_layouts"]
