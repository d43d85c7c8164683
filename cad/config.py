"""cad's configuration keys.

`add_cad_config(cfg)` adds every key cad reads to a Detectron2 `CfgNode`, with its default
and a one-line comment. Call it right after `get_cfg()`; `cad.engine.setup_cfg` does.
"""
from detectron2.config import CfgNode as CN

from cad.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file, key, value, dataset name or weights file that cannot be used (a
    `cad.errors.UserError`: the command lines print it as one line `error: ...` and exit with
    status 2)."""


def add_cad_config(cfg: CN) -> None:
    """Add all cad keys (in place) to a Detectron2 config."""
    _add_runtime_config(cfg)
    _add_vit_config(cfg)
    _add_detector_config(cfg)
    _add_discovery_config(cfg)
    _add_mask2former_config(cfg)
    _add_ssl_config(cfg)
    _add_motion_config(cfg)


def _add_runtime_config(cfg: CN) -> None:
    cfg.CAD = CN()
    # Trainer class from cad.engine.TRAINER_REGISTRY that tools/train_net.py builds.
    cfg.CAD.TRAINER = "CadTrainer"
    # Optimizer of every trainer but the motion one: "SGD" (Detectron2's) or "ADAMW" (Mask2Former's
    # configs, the CPU demo).
    cfg.SOLVER.OPTIMIZER = "SGD"
    # torch intra-op threads per process; 0 keeps torch's default. On small CPUs one thread per
    # process avoids oversubscription (docs/benchmarks.md).
    cfg.CAD.NUM_THREADS = 0
    # Declared partial initialisation for training: model key prefixes that a full MODEL.WEIGHTS
    # checkpoint may lack (they keep their initialisation; the count is logged), e.g. xMOD's 3D
    # networks when it starts from a DIOD file. Empty = strict (cad/checkpoint/loader.py).
    cfg.CAD.WEIGHTS_MAY_MISS = []
    # Number of prediction PNGs written after --eval-only (Detectron2 Visualizer); 0 = none.
    cfg.CAD.VIS_NUM_IMAGES = 0
    # Minimum score of the predictions drawn in those PNGs.
    cfg.CAD.VIS_SCORE_THRESH = 0.5
    # COCOeval maxDets for the class-agnostic evaluator (LVIS-style evaluation uses 300).
    cfg.CAD.EVAL_MAX_DETS = 100
    # Evaluator types (cad.evaluation.EVALUATOR_REGISTRY) run in addition to the split's own one,
    # e.g. ["corloc"] for LOST on a split scored by AP.
    cfg.CAD.EVAL_EXTRA_TYPES = []
    # Also write the predictions as a class-agnostic training JSON (the pseudo-label format of
    # tools/discover.py and tools/self_training_ann.py); "" = off. "{dataset}" is replaced by the
    # split name; a relative path is under OUTPUT_DIR/inference/<split>/.
    cfg.CAD.EVAL_DUMP_TRAINING_JSON = ""
    # Predictions below this score are left out of that JSON (0 keeps every pseudo-label).
    cfg.CAD.EVAL_DUMP_SCORE_THRESH = 0.0
    # Keep OUTPUT_DIR/model_best.pth: the weights with the best value of this evaluation metric
    # (a key of the flattened results, e.g. "segm/AP"), checked after each in-training
    # evaluation (TEST.EVAL_PERIOD); "" = off. Guided Distillation's official trainer keeps it on segm AP.
    cfg.CAD.BEST_CHECKPOINT_METRIC = ""
    # "max" (AP) or "min" (a loss) for that metric.
    cfg.CAD.BEST_CHECKPOINT_MODE = "max"
    # SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR" (Detectron2's DeepLab scheduler, Mask2Former's
    # Cityscapes configs): lr = base * (1 - iter/MAX_ITER)^POWER, floored at CONSTANT_ENDING * base.
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0


def _add_vit_config(cfg: CN) -> None:
    # DINO/DINOv2 ViT backbones (cad/backbones/d2_backbone.py: build_vit_backbone, build_vit_sfp_backbone).
    cfg.CAD.VIT = CN()
    # Architecture, named as the official torch.hub entry (dino_vits16, ..., dinov2_vitl14[_reg],
    # deit_base_patch16_384) or pytorch_pretrained_vit's (B_16, L_16); cad/backbones/vit.py VIT_ARCHS.
    cfg.CAD.VIT.ARCH = "dino_vits16"
    # Official checkpoint: a path or an http(s):// URL; "" = the official file of ARCH (downloaded once
    # into $TORCH_HOME/hub/checkpoints, docs/weights.md); "random" = random init.
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


def _add_discovery_config(cfg: CN) -> None:
    """Pseudo-label generators as meta-architectures (MODEL.META_ARCHITECTURE LOST, MaskCut, VoteCut).

    Defaults are the papers' values, the same as tools/discover.py's (cad/discovery/*.py constants).
    The ViTs run on MODEL.DEVICE.
    """
    cfg.CAD.DISCOVERY = CN()
    # ViT architectures in order (official torch.hub names); [] = the method's default model(s).
    cfg.CAD.DISCOVERY.ARCHS = []
    # Checkpoint of each of ARCHS (official key layout): a path or a URL; [] or "" = the official file
    # (downloaded once into the torch.hub cache); "random" = random init.
    cfg.CAD.DISCOVERY.WEIGHTS = []
    # Architecture overrides of every ViT, 0 = official (small random models for tests and demos).
    cfg.CAD.DISCOVERY.VIT_DEPTH = 0
    cfg.CAD.DISCOVERY.VIT_EMBED_DIM = 0
    cfg.CAD.DISCOVERY.VIT_NUM_HEADS = 0
    # Dense-CRF post-processing of the mask methods (tools/discover.py --no-crf sets it off).
    cfg.CAD.DISCOVERY.CRF = True
    # Autocast of the ViT forward on CUDA: "" (float32), "fp16" or "bf16".
    cfg.CAD.DISCOVERY.AMP = ""
    # MaskCut/VoteCut: square ViT input side, rounded down to the patch multiple (CutLER/CuVLER 480).
    cfg.CAD.DISCOVERY.RESOLUTION = 480
    # MaskCut/VoteCut: cosine threshold tau of the binary patch graph (CutLER/CuVLER 0.15).
    cfg.CAD.DISCOVERY.TAU = 0.15
    # MaskCut/VoteCut: eigensolver of the normalized cut, "lanczos" or "eigh" (cad/discovery/ncut.py).
    cfg.CAD.DISCOVERY.SOLVER = "lanczos"

    cfg.CAD.LOST = CN()
    # k: size of the pool of lowest-degree patches the seed is expanded with (LOST Sec. 3.2: 100).
    cfg.CAD.LOST.K_PATCHES = 100
    # Objects per image: 1 is the paper's single-object LOST; more repeats it on the remaining patches.
    cfg.CAD.LOST.MAX_OBJECTS = 1
    # Multi-object LOST stops at a seed scoring <= this (cad/discovery/lost.py).
    cfg.CAD.LOST.MIN_SCORE = 0.5
    # Features of the last ViT block (main_lost.py --which_features): "k" keys, "q" queries, "v" values.
    cfg.CAD.LOST.FEATURES = "k"
    # The DINO-seg baseline (main_lost.py --dinoseg) instead of LOST: box of the largest CLS-attention component.
    cfg.CAD.LOST.DINOSEG = False
    # Attention head of the last block whose CLS attention DINO-seg uses (main_lost.py --dinoseg_head).
    cfg.CAD.LOST.DINOSEG_HEAD = 4
    # Dilation of a ResNet backbone (CAD.DISCOVERY.ARCHS dino_resnet50/resnet50; main_lost.py --resnet_dilate).
    cfg.CAD.LOST.RESNET_DILATE = 2
    # CorLoc without VOC's truncated/difficult objects and the images left without any (LOST --no_hard).
    cfg.CAD.LOST.NO_HARD = False

    cfg.CAD.MASKCUT = CN()
    # N: normalized cuts (masks) per image (CutLER maskcut.py --N 3).
    cfg.CAD.MASKCUT.N_CUTS = 3
    # A mask whose CRF output has IoU < this with it is dropped (CutLER: 0.5).
    cfg.CAD.MASKCUT.CRF_IOU = 0.5

    cfg.CAD.VOTECUT = CN()
    # k-means cluster counts of each eigenvector (CuVLER Ks = (2, 3)).
    cfg.CAD.VOTECUT.KS = [2, 3]
    # IoU above which proposals fall in the same cluster (CuVLER: 0.6).
    cfg.CAD.VOTECUT.IOU_THRESHOLD = 0.6
    # A pixel is kept when more than this fraction of its cluster votes for it (CuVLER tau_m 0.2).
    cfg.CAD.VOTECUT.VOTE_THRESHOLD = 0.2
    # Masks per image (CuVLER max_masks_per_img 10).
    cfg.CAD.VOTECUT.MAX_MASKS = 10
    # Eigenvectors per model (CuVLER create_pseudo_masks.py --num-eig-vecs): 1 = the Fiedler vector;
    # n > 1 also clusters the 3rd..(n+1)-th eigenvectors of the normalized Laplacian (dense eigh).
    cfg.CAD.VOTECUT.NUM_EIG_VECS = 1


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
    # Mask2Former training augmentation: "resize_flip" (ResizeShortestEdge + flip from INPUT.*),
    # "lsj" (large-scale jitter: flip, ResizeScale(MIN_SCALE..MAX_SCALE), FixedSizeCrop(IMAGE_SIZE);
    # COCO) or "mask_former_instance" (the official MaskFormerInstanceDatasetMapper, Cityscapes:
    # ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING), RandomCrop(INPUT.CROP)
    # when INPUT.CROP.ENABLED, SSD colour distortion when INPUT.COLOR_AUG_SSD, flip).
    cfg.INPUT.MASK2FORMER_AUGMENTATION = "resize_flip"
    # SSD photometric distortion in "mask_former_instance" (Detectron2's PointRend ColorAugSSDTransform).
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0
    # Mask2Former's parameter groups (with SOLVER.OPTIMIZER): backbone LR factor, no decay on embeddings.
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    _add_swin_config(cfg)


def _add_swin_config(cfg: CN) -> None:
    """Swin backbone `D2SwinTransformer` (cad/backbones/swin.py); names and defaults of the official
    add_maskformer2_config."""
    swin = cfg.MODEL.SWIN = CN()
    # Pre-training image size (sets the grid of the absolute position embedding, APE only).
    swin.PRETRAIN_IMG_SIZE = 224
    # Side of the square patches of the patch embedding.
    swin.PATCH_SIZE = 4
    # Channels of stage 1 (stage i has EMBED_DIM * 2^i).
    swin.EMBED_DIM = 96
    # Blocks per stage and attention heads per stage.
    swin.DEPTHS = [2, 2, 6, 2]
    swin.NUM_HEADS = [3, 6, 12, 24]
    # Side of the attention windows (shifted by WINDOW_SIZE // 2 in every second block).
    swin.WINDOW_SIZE = 7
    # MLP hidden width / channels.
    swin.MLP_RATIO = 4.0
    # Biases of the q/k/v projection; QK_SCALE overrides head_dim ** -0.5 when set.
    swin.QKV_BIAS = True
    swin.QK_SCALE = None
    # Dropout after the projections and MLP, dropout of the attention weights.
    swin.DROP_RATE = 0.0
    swin.ATTN_DROP_RATE = 0.0
    # Stochastic depth, rising linearly from 0 to this over all blocks.
    swin.DROP_PATH_RATE = 0.3
    # Absolute position embedding added after the patch embedding (bicubic-resized to the input).
    swin.APE = False
    # LayerNorm after the patch embedding.
    swin.PATCH_NORM = True
    # Outputs among res2..res5 (strides 4..32).
    swin.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Gradient checkpointing of the blocks (saves memory, costs a second forward).
    swin.USE_CHECKPOINT = False


def _add_ssl_config(cfg: CN) -> None:
    """Guided Distillation (semi-supervised teacher-student) keys (official names and defaults,
    GuidedDistillation config/add_cfg.py, unless noted)."""
    ssl = cfg.SSL = CN()
    # Stage 2 (teacher-student on labeled + unlabeled) when True (the official default); stage 1
    # (labeled only, the teacher's pre-training) when False.
    ssl.TRAIN_SSL = True
    # Stage-1 checkpoint (a path or a URL) loaded into the teacher at the start of stage 2 (required then).
    ssl.TEACHER_CKPT = ""
    # Iteration at which the teacher becomes a copy of the student; EMA teacher after it.
    ssl.BURNIN_ITER = 50000
    # Labeled fraction of DATASETS.TRAIN (official train_net.setup): 100 = the whole split; P in
    # 1..99 = P %; P > 100 = 100/P % (250 = 0.4 %). cad.data.ssl_percentage picks the split.
    ssl.PERCENTAGE = 100
    # Seed of the splits cad draws for SSL.PERCENTAGE where no official list exists (COCO: the
    # official splits were drawn unseeded; Cityscapes outside 5/10/20/30 %). cad's addition.
    ssl.SPLIT_SEED = 0
    # The unlabeled batch and loss run at iterations divisible by FREQ (1 = every iteration);
    # the teacher's EMA update runs every iteration.
    ssl.FREQ = 1
    # EMA decay d of the teacher: t <- d*t + (1-d)*s every iteration after BURNIN_ITER.
    ssl.EMA_DECAY = 0.9996
    # Which model is evaluated (during training and with --eval-only), any case: "student",
    # "teacher", or "both" (each evaluated; results under the keys "student" and "teacher").
    ssl.EVAL_WHO = "student"
    # Sampler of the labeled loader in stage 2 (official train_net.setup sets it, with threshold
    # 10, whenever SSL.TRAIN_SSL); stage 1 uses DATALOADER.SAMPLER_TRAIN.
    ssl.LABELED_SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    ssl.LABELED_REPEAT_THRESHOLD = 10.0
    # Unlabeled splits; empty = from DATASETS.TRAIN: a "_labeled" split's "_unlabeled" twin, any
    # other split itself.
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


# Keys that take one of a fixed set of values; `check_choices` rejects anything else.
CHOICES = {
    "SOLVER.OPTIMIZER": ("SGD", "ADAMW"),
    "CAD.LOST.FEATURES": ("k", "q", "v"),
    "CAD.LOST.RESNET_DILATE": (1, 2, 4),
    "INPUT.MASK2FORMER_AUGMENTATION": ("resize_flip", "lsj", "mask_former_instance"),
    "CAD.BEST_CHECKPOINT_MODE": ("max", "min"),
    "CAD.MOTION.ENCODER": ("resnet", "vit"),
    "CAD.MOTION.ENCODER_NORM": ("BN", "GN"),
    "CAD.MOTION.EVAL_BN_STATS": ("batch", "running"),
    "CAD.MOTION.TEACHER_BN_STATS": ("batch", "running"),
    "CAD.MOTION.EVAL_NET": ("student", "teacher"),
    "CAD.MOTION.XMOD_EVAL_OUTPUT": ("fused", "2d", "3d"),
    "CAD.MOTION.SUPERVISION": ("est", "moving", "all"),
}


def check_choices(cfg: CN) -> None:
    """Raise ValueError naming the key and its allowed values when a `CHOICES` key has another value,
    or when the motion ViT encoder's input size is not a multiple of its patch size."""
    for key, allowed in CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value not in allowed:
            raise ValueError(f"{key} is '{value}'; expected one of {', '.join(allowed)}")
    if cfg.CAD.MOTION.ENCODER == "vit":
        from cad.backbones.vit import get_spec

        patch, size = get_spec(cfg.CAD.VIT.ARCH).patch_size, tuple(cfg.CAD.MOTION.INPUT_SIZE)
        if size[0] % patch or size[1] % patch:
            # the DINOv2 patch embedding asserts it (DIOD_DINOv2 uses 490x980 on TRI-PD, 378x1260 on KITTI)
            raise ValueError(f"CAD.MOTION.INPUT_SIZE {size} is not a multiple of {cfg.CAD.VIT.ARCH}'s patch size {patch} "
                             "(CAD.MOTION.ENCODER vit)")


def _add_motion_config(cfg: CN) -> None:
    """DIOD / xMOD slot models (cad.modeling.motion, cad.distillation.motion)."""
    m = cfg.CAD.MOTION = CN()
    # Frames per training/evaluation clip (DIOD: 5).
    m.CLIP_LENGTH = 5
    # Model input (height, width); TRI-PD frames are resized x0.5 and cropped to 480x968.
    m.INPUT_SIZE = (480, 968)
    # Pixel normalisation (x/255 - mean)/std per channel of the networks' BGR input (DIOD
    # datasetPD.py / datasetPDEval.py and xMOD's dataloaders read frames with cv2.imread and never
    # convert them): 0.5/0.5 as DIOD; DIOD_DINOv2 applies ImageNet's RGB statistics
    # (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225) to its BGR tensors as they are.
    m.PIXEL_MEAN = (0.5, 0.5, 0.5)
    m.PIXEL_STD = (0.5, 0.5, 0.5)
    # Training augmentation shared by all frames: random resized crop (prob, area scale, fixed ratio).
    m.CROP_PROB = 0.4
    m.CROP_SCALE = (0.75, 1.0)
    # Horizontal flip probability.
    m.FLIP_PROB = 0.4
    # Student colour augmentation (per clip): jitter prob and b/c/s/hue strengths, grayscale, solarize.
    m.COLOR_JITTER_PROB = 0.8
    m.COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)
    m.GRAYSCALE_PROB = 0.2
    m.SOLARIZE_PROB = 0.2
    # Training masks (DIOD trainPD_ts.py / xMOD train.py --supervision): "est" (estimated motion
    # masks: TRI-PD est_masks/, KITTI image_0X/raft_seg/), "moving" (TRI-PD moving_masks/, the
    # ground-truth moving objects) or "all" (TRI-PD ari_masks/, every object). KITTI has "est" only.
    m.SUPERVISION = "est"
    # Training length in epochs of the training split, as the official scripts count them
    # (DataLoader drop_last: an epoch = floor(camera videos / SOLVER.IMS_PER_BATCH) iterations);
    # 0 = SOLVER.MAX_ITER. When > 0, SOLVER.MAX_ITER is set from it when training starts (logged).
    m.EPOCHS = 0
    # Motion-mask ids with fewer pixels than this (at input size) become background (TRI-PD: 50).
    m.MIN_MASK_AREA = 50
    # Frame encoder of the RGB network: "resnet" (DIOD models/resnet.py, ResNet-18 from scratch) or
    # "vit" (DIOD_DINOv2 models/model_bg_dinov2.py: the CAD.VIT ViT, dinov2_vits14 in the official
    # code, frozen when CAD.VIT.FREEZE; its last VIT_LAYERS blocks' normalised patch tokens,
    # concatenated and resized to stride 4). xMOD's range network is always a ResNet.
    m.ENCODER = "resnet"
    # "vit" encoder: number of last ViT blocks whose patch tokens are concatenated (DIOD_DINOv2: 4).
    m.VIT_LAYERS = 4
    # Encoder: ResNet-18 layout; channels of the first stage (64 in the reference).
    m.ENCODER_WIDTH = 64
    # Encoder normalisation: "BN" (DIOD) or "GN" (GroupNorm: per-image statistics, the same in
    # training, in the EMA teacher and in evaluation; the synthetic configs use it).
    m.ENCODER_NORM = "BN"
    # BatchNorm statistics at evaluation: "batch" = the statistics of the batch being evaluated
    # (DIOD: evalPD_ARI.py / evalKITTI_ARI.py / the evaluation in trainPD_ts.py never call
    # model.eval(), so each 5-frame TRI-PD chunk is normalised with its own statistics; the
    # published numbers were measured that way) or "running" (eval-mode BN with the running
    # statistics; xMOD eval/main_evaluation.py calls eval(), so the xMOD configs use it).
    m.EVAL_BN_STATS = "batch"
    # BatchNorm statistics of the teachers' forward pass during self-distillation: "batch" (DIOD
    # trainPD_ts.py and xMOD train/trainer.py never put the teachers in eval mode) or "running".
    m.TEACHER_BN_STATS = "batch"
    # Number of slots (the last one is the background slot), slot size, slot MLP hidden size.
    m.NUM_SLOTS = 45
    m.SLOT_DIM = 64
    m.MLP_HIDDEN = 128
    # Slot-attention iterations per frame (DIOD: 1; slots are carried over from the previous frame).
    m.SLOT_ITERS = 1
    # Decoder hidden channels; 0 = SLOT_DIM (reference). Smaller values make CPU demos cheaper.
    m.DECODER_DIM = 0
    # Loss weights: reconstruction, motion-mask WBCE, fg NLL, fg L1 regulariser, teacher pseudo-labels.
    m.RECON_WEIGHT = 1.0
    m.MASK_WEIGHT = 1.0
    m.NLL_WEIGHT = 1.0
    m.REG_WEIGHT = 0.3
    m.TEACHER_WEIGHT = 1.0
    # Iteration at which self-distillation starts (teacher <- student copy); < 0 = never (burn-in only).
    m.TEACHER_START_ITER = -1
    # EMA keep rate of the teacher, applied every optimiser step to the whole state_dict.
    m.EMA_KEEP_RATE = 0.996
    # Pseudo-labels/motion masks are kept when the teacher's mean fg inside them is >= this.
    m.CONF_THRESH = 0.9
    # Pseudo-label components with <= this many pixels (loss resolution) are dropped.
    m.MIN_PSEUDO_AREA = 10
    # Learning rate halves every this many iterations (DIOD: 0.5^(step/50000), warmup via SOLVER.WARMUP_ITERS).
    m.LR_HALF_LIFE = 50000
    # The decay applies during the warmup too (DIOD trainPD_ts.py); False: linear warmup, then the
    # decay (xMOD train/trainer._update_learning_rate).
    m.LR_DECAY_IN_WARMUP = True
    # Which network --eval-only and in-training evaluation use: "student" or "teacher".
    m.EVAL_NET = "student"
    # F1@50 IoU threshold; strict ">" as DIOD (False: ">=" as xMOD); min GT objects for a clip's ARI.
    m.EVAL_IOU = 0.5
    m.EVAL_STRICT_IOU = True
    m.EVAL_MIN_OBJECTS = 2
    # xMOD: weight of the 3D reconstruction loss, late-fusion IoU threshold, which output to evaluate
    # ("fused", "2d" or "3d").
    m.RECON_3D_WEIGHT = 1.0
    m.FUSION_IOU = 0.1
    m.XMOD_EVAL_OUTPUT = "fused"
    # Write every evaluated frame's slot masks (xMOD eval/main_evaluation.py --save_predictions) to
    # OUTPUT_DIR/inference/<split>/predictions/<video>/<frame>.npz ('data': float [K, h, w]; the
    # fused binary masks for XMOD_EVAL_OUTPUT fused).
    m.SAVE_PREDICTIONS = False
    # xMOD 3D augmentation: point-drop fraction and x/y/z jitter (xMOD PD: 0.4/0.4; KITTI: 0.1/0).
    m.POINT_DROP_PROB = 0.4
    m.POINT_JITTER_PROB = 0.4
    # xMOD step 3 (XMOD from two files): MODEL.WEIGHTS is the 2D checkpoint (DIOD's file, xMOD's
    # epoch_*_2d.ckpt or cad's DIOD model_final.pth) and this is the 3D one (xMOD's epoch_*_3d.ckpt
    # or cad's DIOD3D model_final.pth, xMOD steps 1-2), as xMOD's trainer takes checkpoint_path_2d
    # and checkpoint_path_3d (train/trainer._load_teacher_checkpoints). A path or a URL, read by
    # cad.checkpoint's loader when the model is an XMOD.
    m.WEIGHTS_3D = ""
    # Official checkpoint trained at another INPUT_SIZE (DIOD's KITTI run starts from the TRI-PD
    # model; trainKITTI_ts.py load_model skips the shape-mismatched tensors): True re-initialises
    # the resolution-tied LayerNorm over [h*w, D] (weight 1, bias 0, as a new nn.LayerNorm) and
    # logs a warning naming it (a declared partial initialisation); False: loading fails.
    m.RESET_RESOLUTION_TIED = False
