"""DIOD / xMOD slot-attention video models (registered meta-architectures `DIOD`, `DIOD3D`, `XMOD`;
the RGB network's encoder a ResNet or, with CAD.MOTION.ENCODER vit, DIOD_DINOv2's ViT); their
checkpoint layouts (`diod`, `xmod_2d`, `xmod_3d`, `diod_dinov2`, `cad_diod`) are `cad.checkpoint.layouts.motion`."""
from cad.modeling.motion.meta_arch import DIOD, DIOD3D, RANGE_ARCHS, XMOD
from cad.modeling.motion.networks import SlotAttention, SlotVideoNet

__all__ = ["DIOD", "DIOD3D", "RANGE_ARCHS", "XMOD", "SlotAttention", "SlotVideoNet"]
