"""cad's configuration keys.

`add_cad_config(cfg)` adds every key cad reads to a Detectron2 `CfgNode`, with its default
and a one-line comment. Call it right after `get_cfg()`; `cad.engine.setup_cfg` does.
"""
from detectron2.config import CfgNode as CN


def add_cad_config(cfg: CN) -> None:
    """Add all cad keys (in place) to a Detectron2 config."""
    _add_runtime_config(cfg)
    _add_vit_config(cfg)
    _add_detector_config(cfg)


def _add_runtime_config(cfg: CN) -> None:
    cfg.CAD = CN()
    # Trainer class from cad.engine.TRAINER_REGISTRY that tools/train_net.py builds.
    cfg.CAD.TRAINER = "CadTrainer"
    # torch intra-op threads per process; 0 keeps torch's default. On small CPUs one thread per
    # process avoids oversubscription (measured ~3x slower with 2 threads on a busy 2-core box).
    cfg.CAD.NUM_THREADS = 0
    # Number of prediction PNGs written after --eval-only (Detectron2 Visualizer); 0 = none.
    cfg.CAD.VIS_NUM_IMAGES = 0
    # Minimum score of the predictions drawn in those PNGs.
    cfg.CAD.VIS_SCORE_THRESH = 0.5
    # COCOeval maxDets for the class-agnostic evaluator (LVIS-style evaluation uses 300).
    cfg.CAD.EVAL_MAX_DETS = 100


def _add_vit_config(cfg: CN) -> None:
    # DINO/DINOv2 ViT backbones (cad/backbones/d2_backbone.py: build_vit_backbone, build_vit_sfp_backbone).
    cfg.CAD.VIT = CN()
    # Architecture, named as the official torch.hub entry (dino_vits16, ..., dinov2_vitl14[_reg]).
    cfg.CAD.VIT.ARCH = "dino_vits16"
    # Official checkpoint file; "" = $TORCH_HOME/hub/checkpoints/<official name>; "random" = random init.
    cfg.CAD.VIT.WEIGHTS = ""
    # Freeze the ViT's weights (train only what sits on top of it).
    cfg.CAD.VIT.FREEZE = False
    # Stochastic depth of the ViT blocks during training (ViTDet uses 0.1 for ViT-B).
    cfg.CAD.VIT.DROP_PATH_RATE = 0.0
    # Architecture overrides, 0 = official (small random models for tests and demos).
    cfg.CAD.VIT.DEPTH = 0
    cfg.CAD.VIT.EMBED_DIM = 0
    cfg.CAD.VIT.NUM_HEADS = 0
    # Simple feature pyramid: output strides (powers of two around the ViT stride), named p<log2 stride>.
    cfg.CAD.VIT.PYRAMID_STRIDES = [4, 8, 16, 32]
    # Channels of every pyramid level.
    cfg.CAD.VIT.PYRAMID_OUT_CHANNELS = 256
    # Norm of the pyramid convs: "LN" (channel LayerNorm, as ViTDet), "GN", "BN", "SyncBN" or "".
    cfg.CAD.VIT.PYRAMID_NORM = "LN"
    # Add one more level (stride x2 of the last) by max-pooling, as FPN's p6 for the RPN.
    cfg.CAD.VIT.PYRAMID_TOP_BLOCK = True

def _add_detector_config(cfg: CN) -> None:
    """Class-agnostic detectors on pseudo-masks: soft targets, DropLoss, copy-paste."""
    # CuVLER soft targets: the classification target of a proposal matched to a pseudo-mask of
    # score s is (s, 1 - s); its box and mask losses are weighted by s (PseudoLabel* heads).
    cfg.MODEL.ROI_HEADS.SOFT_TARGETS = False
    # CutLER DropLoss: no classification loss for proposals whose predicted box has IoU <= thresh
    # with every pseudo-box of the image (PseudoLabel* ROI heads).
    cfg.MODEL.ROI_HEADS.USE_DROPLOSS = False
    # DropLoss IoU threshold (CutLER/CuVLER: 0.01).
    cfg.MODEL.ROI_HEADS.DROPLOSS_IOU_THRESH = 0.01
    # Copy-paste (CopyPasteTrainer): probability that an image of the batch receives objects.
    cfg.DATALOADER.COPY_PASTE_RATE = 1.0
    # Copy-paste: the source image is resized by r ~ U(MIN_RATIO, MAX_RATIO) of the target size.
    cfg.DATALOADER.COPY_PASTE_MIN_RATIO = 0.3
    cfg.DATALOADER.COPY_PASTE_MAX_RATIO = 1.0
    # Copy-paste: paste a uniform random number in [1, n] of the source's n objects (all if False).
    cfg.DATALOADER.COPY_PASTE_RANDOM_NUM = True
