"""DIOD / xMOD slot-attention video models (registered meta-architectures `DIOD`, `XMOD`); their
official checkpoint layouts are `cad.checkpoint.layouts.motion`."""
from cad.modeling.motion.meta_arch import DIOD, XMOD
from cad.modeling.motion.networks import SlotAttention, SlotVideoNet

__all__ = ["DIOD", "XMOD", "SlotAttention", "SlotVideoNet"]
