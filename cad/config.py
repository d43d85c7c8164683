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
    _add_mask2former_config(cfg)
    _add_ssl_config(cfg)


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

def _add_mask2former_config(cfg: CN) -> None:
    """Mask2Former keys (names as in the official add_maskformer2_config; COCO instance defaults)."""
    mf = cfg.MODEL.MASK_FORMER = CN()
    # Supervise every intermediate decoder prediction (aux losses with suffix _i).
    mf.DEEP_SUPERVISION = True
    # Cross-entropy weight of the no-object class.
    mf.NO_OBJECT_WEIGHT = 0.1
    # Loss (and matching cost) weights: classification, mask sigmoid-BCE, mask dice.
    mf.CLASS_WEIGHT = 2.0
    mf.MASK_WEIGHT = 5.0
    mf.DICE_WEIGHT = 5.0
    # Transformer decoder: attention heads, dropout, FFN width, hidden size.
    mf.NHEADS = 8
    mf.DROPOUT = 0.0
    mf.DIM_FEEDFORWARD = 2048
    mf.HIDDEN_DIM = 256
    # Number of predictions: learnable-query prediction + (DEC_LAYERS - 1) decoder layers.
    mf.DEC_LAYERS = 10
    # Pre-norm decoder layers (unsupported; Mask2Former is post-norm).
    mf.PRE_NORM = False
    # Number of object queries.
    mf.NUM_OBJECT_QUERIES = 100
    # Always project the pixel-decoder features with a 1x1 conv, even when dims match.
    mf.ENFORCE_INPUT_PROJ = False
    # Images are padded to a multiple of this (also applied to the backbone's own divisibility).
    mf.SIZE_DIVISIBILITY = 32
    # Detections per image of instance inference are TEST.DETECTIONS_PER_IMAGE (top-k of Q*K).
    # Points per mask for the matcher and the mask losses; PointRend importance sampling.
    mf.TRAIN_NUM_POINTS = 112 * 112
    mf.OVERSAMPLE_RATIO = 3.0
    mf.IMPORTANCE_SAMPLE_RATIO = 0.75
    head = cfg.MODEL.SEM_SEG_HEAD
    # Pixel decoder class in cad.modeling.mask2former.PIXEL_DECODER_REGISTRY.
    head.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    # Channels of the per-pixel mask embedding (1/COMMON_STRIDE resolution).
    head.MASK_DIM = 256
    # Deformable encoder layers of the pixel decoder.
    head.TRANSFORMER_ENC_LAYERS = 6
    # Backbone levels fed to the deformable encoder (the others go through the FPN path).
    head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # FFN width of the deformable encoder (the reference hard-codes 1024).
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 1024
    # Mask2Former training augmentation: "resize_flip" (ResizeShortestEdge + flip from INPUT.*)
    # or "lsj" (large-scale jitter: flip, ResizeScale(MIN_SCALE..MAX_SCALE), FixedSizeCrop(IMAGE_SIZE)).
    cfg.INPUT.MASK2FORMER_AUGMENTATION = "resize_flip"
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # AdamW with per-group multipliers: backbone LR factor and weight decay of embeddings.
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Simple feature pyramid over a registered plain ViT backbone (DINOv2): inner backbone name
    # in BACKBONE_REGISTRY, and output channels of the stride 4/8/16/32 maps.
    cfg.MODEL.SFP = CN()
    cfg.MODEL.SFP.VIT_BACKBONE = "build_dinov2_vit_backbone"
    cfg.MODEL.SFP.OUT_CHANNELS = [128, 256, 512, 1024]


def _add_ssl_config(cfg: CN) -> None:
    """Guided Distillation (semi-supervised teacher-student) keys."""
    ssl = cfg.SSL = CN()
    # Stage 2 (teacher-student on labeled + unlabeled) when True; stage 1 (labeled only) when
    # False. The reference defaults to True; cad defaults to plain supervised training.
    ssl.TRAIN_SSL = False
    # Stage-1 checkpoint loaded into the teacher at the start of stage 2 (required then).
    ssl.TEACHER_CKPT = ""
    # Iteration at which the teacher becomes a copy of the student; EMA teacher after it.
    ssl.BURNIN_ITER = 50000
    # Labeled percentage, recorded for bookkeeping (the split is chosen by DATASETS.TRAIN).
    ssl.PERCENTAGE = 100.0
    # EMA decay d of the teacher: t <- d*t + (1-d)*s every iteration after BURNIN_ITER.
    ssl.EMA_DECAY = 0.9996
    # Which model is evaluated (during training and with --eval-only): "teacher" or "student".
    ssl.EVAL_WHO = "student"
    # Unlabeled splits; empty = DATASETS.TRAIN names with "_labeled" replaced by "_unlabeled".
    ssl.DATASETS_UNLABELED = ()
    # True (official): the unlabeled pool also contains the labeled images (the reference uses
    # all of train2017); False: only the unlabeled split, an exact partition.
    ssl.UNLABELED_INCLUDES_LABELED = True
    # Unlabeled images per iteration over all processes (reference: same as SOLVER.IMS_PER_BATCH).
    ssl.IMS_PER_BATCH_UNLABELED = 16
    # Pseudo-labels: keep queries whose argmax is not no-object and max class prob > CLASS_THRESH,
    # binarise mask probabilities at MASK_THRESH, drop masks whose soft area <= MIN_MASK_AREA px.
    ssl.CLASS_THRESH = 0.7
    ssl.MASK_THRESH = 0.5
    ssl.MIN_MASK_AREA = 5.0
    # Weight of every unlabeled loss term (suffix _ssl).
    ssl.UNLABELED_LOSS_WEIGHT = 2.0
    # Strong view of the student (photometric only): colour jitter (brightness, contrast,
    # saturation, hue) with prob, grayscale prob, Gaussian blur prob and sigma range.
    ssl.STRONG_COLOR_JITTER = [0.4, 0.4, 0.4, 0.1]
    ssl.STRONG_COLOR_JITTER_PROB = 0.8
    ssl.STRONG_GRAYSCALE_PROB = 0.2
    ssl.STRONG_BLUR_PROB = 0.5
    ssl.STRONG_BLUR_SIGMA = [0.1, 2.0]
