"""cad's configuration keys.

`add_cad_config(cfg)` adds every key cad reads to a Detectron2 `CfgNode`, with its default
and a one-line comment. Call it right after `get_cfg()`; `cad.engine.setup_cfg` does.
"""
from detectron2.config import CfgNode as CN


def add_cad_config(cfg: CN) -> None:
    """Add all cad keys (in place) to a Detectron2 config."""
    _add_runtime_config(cfg)
    _add_motion_config(cfg)


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


def _add_motion_config(cfg: CN) -> None:
    """DIOD / xMOD slot models (cad.modeling.motion, cad.distillation.motion)."""
    m = cfg.CAD.MOTION = CN()
    # Frames per training/evaluation clip (DIOD: 5).
    m.CLIP_LENGTH = 5
    # Model input (height, width); TRI-PD frames are resized x0.5 and cropped to 480x968.
    m.INPUT_SIZE = (480, 968)
    # Pixel normalisation: (x/255 - 0.5)/0.5 as in DIOD.
    m.PIXEL_MEAN = 0.5
    m.PIXEL_STD = 0.5
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
    # Motion-mask ids with fewer pixels than this (at input size) become background (TRI-PD: 50).
    m.MIN_MASK_AREA = 50
    # Encoder: ResNet-18 layout; channels of the first stage (64 in the reference).
    m.ENCODER_WIDTH = 64
    # Number of slots (the last one is the background slot), slot size, slot MLP hidden size.
    m.NUM_SLOTS = 45
    m.SLOT_DIM = 64
    m.MLP_HIDDEN = 128
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
    # xMOD 3D augmentation: point-drop fraction and x/y/z jitter (xMOD PD: 0.4/0.4; KITTI: 0.1/0).
    m.POINT_DROP_PROB = 0.4
    m.POINT_JITTER_PROB = 0.4
