"""C4 ROI heads with a normalisation layer after res5, for self-supervised ResNet initialisations.

Self-supervised ResNet-50s (MoCo, DINO) were trained with BatchNorm statistics unlike ImageNet
classifiers; their detection recipes (MoCo's, used by LOST's class-agnostic detector) fine-tune
them with SyncBN everywhere and one extra norm on the res5 output in the box head.
"""
from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads

__all__ = ["Res5ROIHeadsExtraNorm"]


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """`Res5ROIHeads` whose res5 stage ends with a `MODEL.RESNETS.NORM` layer."""

    @classmethod
    def _build_res5_block(cls, cfg):
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels
