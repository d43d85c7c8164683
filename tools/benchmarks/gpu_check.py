#!/usr/bin/env python
"""GPU check: a few training steps of every training family and every discovery method on one
device (CUDA by default), and that device's inference outputs against the CPU's for the same weights.

Training families (paper configs and per-GPU batches, generated data at the papers' sizes written by
benchdata.py, random initialisation so that the machine needs no download; AMP where the config
enables it): cascade (CuVLER Cascade Mask R-CNN R50-FPN, copy-paste, 800x1067 images with 10
pseudo-masks), lost_cad (Faster R-CNN R50-C4), gd_stage1 / gd_stage2 (Guided Distillation
Mask2Former R50, LSJ 1024; stage 2 with a random stage-1 teacher), diod, diod_dinov2 (frozen
DINOv2 ViT-S/14 encoder), diod3d (xMOD's 3D network alone) and xmod on TRI-PD clips (480x968). Each runs SOLVER.MAX_ITER = --steps iterations through its trainer as tools/train_net.py
does (hooks included; with --num-gpus N, N processes on NCCL) and reports
- s/iter (median of the iterations after --warmup), images/s (the batch over all processes / s/iter;
  frames of the clips for diod/xmod), peak CUDA memory of rank 0;
- data wait: the share of the step time the GPU waited for its batch (Detectron2's `data_time`,
  the slowest rank's, over the iteration `time`, summed after --warmup);
- agreement: the final weights are loaded into the model on the device and on the CPU, which run
  inference (float32, TF32 off) on 2 training inputs mapped for inference; outputs must agree:
    R-CNN: >= 90 % of the CPU's 20 best detections per image have a device detection with box IoU
      >= 0.9 (and mask IoU >= 0.9 when masks are predicted) and a score within 0.02 (NMS breaks
      near-ties either way);
    Mask2Former: class and mask probabilities of the raw predictions within 1e-3 (max abs);
    DIOD/xMOD: slot mask probabilities within 1e-3 (max abs).
Discovery methods (lost, maskcut, votecut at the official resolutions and architectures, random
weights unless --hub-weights): stage 1 on the device and stage 2 on CPU over --images images of
480x640: s/image and images/s of each stage, peak CUDA memory; agreement: >= 90 % of the CPU's
objects have a device object with box (LOST) or mask (MaskCut, VoteCut) IoU >= 0.9.

Exit status 1 when an agreement check fails, 2 on bad arguments (e.g. --device cuda without CUDA).

examples:
  tools/benchmarks/gpu_check.py                          # everything on one GPU (~10 minutes)
  tools/benchmarks/gpu_check.py --num-gpus 8 --only cascade gd_stage2
  tools/benchmarks/gpu_check.py --device cpu --tiny      # what the test suite runs
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.engine import HookBase

REPO = Path(__file__).resolve().parents[2]
MATCH_IOU, MATCH_FRACTION, SCORE_TOL, TOP_DETECTIONS, PROB_TOL = 0.9, 0.9, 0.02, 20, 1e-3


@dataclass(frozen=True)
class TrainingJob:
    config: str
    opts: Tuple[str, ...]  # the papers' sizes, generated data
    tiny_config: str
    tiny_opts: Tuple[str, ...]
    outputs: str  # how inference outputs are compared: "rcnn", "mask2former", "motion"


_TINY_RCNN = ("INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
              "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
              "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
              "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32")
_TINY_FPN = ("MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
             "MODEL.ROI_MASK_HEAD.NUM_CONV", "1")
_TINY_GD = ("MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "SOLVER.IMS_PER_BATCH", "2", "SSL.IMS_PER_BATCH_UNLABELED", "2",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "INPUT.IMAGE_SIZE", "64")
_MOTION = ("CAD.MOTION.EPOCHS", "0", "CAD.MOTION.TEACHER_START_ITER", "1")  # SOLVER.MAX_ITER steps, distillation from it 1
_TINY_MOTION = (*_MOTION, "DATASETS.TRAIN", "('synthetic_motion_tiny_val',)", "SOLVER.IMS_PER_BATCH", "2",
                "CAD.MOTION.INPUT_SIZE", "(32,64)", "CAD.MOTION.ENCODER_WIDTH", "4", "CAD.MOTION.SLOT_DIM", "8",
                "CAD.MOTION.MLP_HIDDEN", "8", "CAD.MOTION.DECODER_DIM", "4", "CAD.MOTION.NUM_SLOTS", "4")
_GD_FULL = ("DATASETS.TRAIN", "('bench_coco',)", "SSL.PERCENTAGE", "100", "SOLVER.IMS_PER_BATCH", "2")  # the whole split labeled
TRAINING = {
    "cascade": TrainingJob(
        "configs/CuVLER/cascade_mask_rcnn_R_50_FPN_votecut_cad.yaml",
        ("DATASETS.TRAIN", "('bench_pseudo',)", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(800,)"),
        "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml",
        ("DATASETS.TRAIN", "('synthetic_shapes_tiny_train_pseudo',)", *_TINY_RCNN, *_TINY_FPN), "rcnn"),
    "lost_cad": TrainingJob(
        "configs/LOST/faster_rcnn_R_50_C4_lost_cad_voc07.yaml", ("DATASETS.TRAIN", "('bench_coco',)", "SOLVER.IMS_PER_BATCH", "2"),
        "configs/LOST/faster_rcnn_R_50_C4_lost_cad_voc07.yaml",
        ("DATASETS.TRAIN", "('synthetic_shapes_tiny_train',)", *_TINY_RCNN, "MODEL.RESNETS.DEPTH", "18",
         "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.WIDTH_PER_GROUP", "8"),
        "rcnn"),
    "gd_stage1": TrainingJob(
        "configs/GuidedDistillation/coco/r50_teacher_1pct.yaml", _GD_FULL,
        "configs/GuidedDistillation/mask2former_tiny_synthetic_teacher.yaml", _TINY_GD, "mask2former"),
    "gd_stage2": TrainingJob(
        "configs/GuidedDistillation/coco/r50_student_1pct.yaml",
        (*_GD_FULL, "SSL.DATASETS_UNLABELED", "('bench_coco',)", "SSL.UNLABELED_INCLUDES_LABELED", "False",
         "SSL.IMS_PER_BATCH_UNLABELED", "2", "SSL.BURNIN_ITER", "1"),
        "configs/GuidedDistillation/mask2former_tiny_synthetic_student.yaml", (*_TINY_GD, "SSL.BURNIN_ITER", "1"),
        "mask2former"),
    "diod": TrainingJob("configs/DIOD/diod_tri_pd_burn_in.yaml", _MOTION, "configs/DIOD/diod_synthetic.yaml", _TINY_MOTION, "motion"),
    "diod_dinov2": TrainingJob(
        "configs/DIOD/diod_dinov2_tri_pd_burn_in.yaml", (*_MOTION, "CAD.VIT.WEIGHTS", "random"),
        "configs/DIOD/diod_dinov2_tri_pd_burn_in.yaml",
        (*_TINY_MOTION, "CAD.MOTION.INPUT_SIZE", "(56,112)", "CAD.VIT.WEIGHTS", "random", "CAD.VIT.DEPTH", "2",
         "CAD.VIT.EMBED_DIM", "48", "CAD.VIT.NUM_HEADS", "2", "CAD.MOTION.VIT_LAYERS", "2"), "motion"),
    "diod3d": TrainingJob("configs/xMOD/xmod_tri_pd_3d_burn_in.yaml", (*_MOTION, "DATASETS.TRAIN", "('tri_pd_train',)"),
                          "configs/xMOD/xmod_synthetic_3d.yaml", _TINY_MOTION, "motion"),
    "xmod": TrainingJob("configs/xMOD/xmod_tri_pd.yaml", (*_MOTION, "CAD.MOTION.WEIGHTS_3D", ""),
                        "configs/xMOD/xmod_synthetic.yaml", _TINY_MOTION, "motion"),
}
# Every run: random init, no evaluation or extra checkpoints, Detectron2's writers on every iteration.
COMMON = ("MODEL.WEIGHTS", "", "SOLVER.REFERENCE_WORLD_SIZE", "0", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
          "TEST.PRECISE_BN.ENABLED", "False", "SOLVER.CHECKPOINT_PERIOD", "1000000", "CAD.VIS_NUM_IMAGES", "0", "SEED", "0")
TINY_COMMON = ("DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1")
METHODS = ("lost", "maskcut", "votecut")
# --tiny: small random ViTs and inputs (tests/test_cuts_methods.py's sizes).
TINY_VIT = dict(depth=2, embed_dim=48, num_heads=2)
TINY_RESOLUTION = {"maskcut": 64, "votecut": 112}


def write_data(root: Path) -> None:
    """The generated training data at the papers' sizes under `root` (= $DETECTRON2_DATASETS)."""
    from benchdata import write_instance_coco, write_tri_pd

    write_instance_coco(root / "bench_pseudo", "bench_pseudo", 8, 800, 1067, 10, seed=1)
    write_instance_coco(root / "bench_coco", "bench_coco", 8, 480, 640, 7, seed=2)
    write_tri_pd(root, 4, 10, 1216, 1936, seed=3)


def _register(root: Path) -> None:
    from benchdata import register_instance_coco

    for name in ("bench_pseudo", "bench_coco"):
        if (root / name).exists():
            register_instance_coco(root / name, name)


def train_args(name: str, device: str, steps: int, tiny: bool, out: Path, teacher: Optional[Path] = None,
               num_gpus: int = 1) -> argparse.Namespace:
    """tools/train_net.py's arguments for family `name`; with `num_gpus` processes, each gets the
    one-process batch (the batch sizes are multiplied by `num_gpus`)."""
    from cad.engine.cli import train_argument_parser
    from cad.engine.setup import build_cfg

    job = TRAINING[name]
    opts = [*COMMON, *(job.tiny_opts + TINY_COMMON if tiny else job.opts), "SOLVER.MAX_ITER", str(steps),
            "MODEL.DEVICE", device, "OUTPUT_DIR", str(out)]
    if teacher is not None:
        opts += ["SSL.TEACHER_CKPT", str(teacher)]
    args = train_argument_parser().parse_args(["--config-file", str(REPO / (job.tiny_config if tiny else job.config)), *opts])
    if num_gpus > 1:
        one = build_cfg(args)
        args.opts += ["SOLVER.IMS_PER_BATCH", str(one.SOLVER.IMS_PER_BATCH * num_gpus),
                      "SSL.IMS_PER_BATCH_UNLABELED", str(one.SSL.IMS_PER_BATCH_UNLABELED * num_gpus)]
    return args


def write_teacher(args: argparse.Namespace, path: Path) -> Path:
    """A random-init stage-1 Mask2Former of `args`' architecture (the stage-2 teacher), on CPU."""
    from detectron2.checkpoint import DetectionCheckpointer

    from cad.engine.setup import build_cfg
    from cad.engine.trainer import TRAINER_REGISTRY

    cpu = argparse.Namespace(**vars(args))
    cpu.opts = [*args.opts, "MODEL.DEVICE", "cpu", "SSL.TRAIN_SSL", "False"]
    cfg = build_cfg(cpu)
    torch.manual_seed(0)
    DetectionCheckpointer(TRAINER_REGISTRY.get(cfg.CAD.TRAINER).build_model(cfg), save_dir=str(path.parent)).save(path.stem)
    return path


class StepTimes(HookBase):
    """Detectron2 hook: wall seconds of every iteration, hooks included ({iteration: s}); with CUDA,
    synchronised at the end of each step so that a step's queued kernels count in it."""

    def __init__(self):
        super().__init__()
        self.times: Dict[int, float] = {}

    def before_step(self):
        self._start = time.perf_counter()

    def after_step(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times[self.trainer.iter] = time.perf_counter() - self._start


def train_process(args: argparse.Namespace, result: str, data_root: str) -> None:
    """One process of a training run (`cad.engine.launch.launch` target): train, then rank 0 writes
    its timings to `result` (JSON)."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from cad.engine.setup import build_cfg
    from cad.engine.trainer import TRAINER_REGISTRY

    _register(Path(data_root))
    cfg = build_cfg(args)
    seed_all_rng(cfg.SEED + comm.get_rank())
    if cfg.CAD.NUM_THREADS > 0:
        torch.set_num_threads(cfg.CAD.NUM_THREADS)
    trainer = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)(cfg)
    trainer.resume_or_load(resume=False)
    step_times = StepTimes()
    trainer.register_hooks([step_times])
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    if comm.is_main_process():
        stage2 = cfg.CAD.TRAINER == "GuidedDistillationTrainer" and cfg.SSL.TRAIN_SSL
        batch = cfg.SOLVER.IMS_PER_BATCH + (cfg.SSL.IMS_PER_BATCH_UNLABELED if stage2 else 0)
        frames = cfg.CAD.MOTION.CLIP_LENGTH if cfg.CAD.TRAINER == "MotionTrainer" else 1
        Path(result).write_text(json.dumps({
            "time": step_times.times, "data_time": {int(it): v for v, it in trainer.storage.history("data_time").values()},
            "images_per_step": batch * frames, "amp": bool(cfg.SOLVER.AMP.ENABLED and cuda), "world_size": comm.get_world_size(),
            "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        }))


def step_summary(times: Dict[int, float], data_times: Dict[int, float], images_per_step: int, warmup: int) -> Dict:
    """s/iter (median of the iterations >= `warmup`), images/s, and the data-wait share of the step
    time over those iterations; `times`/`data_times` map iteration -> seconds."""
    times, data = ({int(i): v for i, v in d.items()} for d in (times, data_times))  # JSON made the keys str
    its = sorted(i for i in times if i >= warmup)
    if not its:
        raise ValueError(f"no timed iteration after the {warmup} warm-up iterations: raise --steps")
    s_per_iter = statistics.median(times[i] for i in its)
    return {"s_per_iter": s_per_iter, "images_per_s": images_per_step / s_per_iter,
            "data_wait": sum(data[i] for i in its) / sum(times[i] for i in its)}


# ---------------------------------------------------------------------------------------------
# agreement of inference outputs


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, H, W), (m, H, W) bool -> (n, m) IoU."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    inter = a @ b.T
    return inter / (a.sum(1)[:, None] + b.sum(1)[None] - inter).clamp(min=1)


def detection_agreement(ref, other, top: int = TOP_DETECTIONS, iou: float = MATCH_IOU, score_tol: float = SCORE_TOL) -> float:
    """Fraction of `ref`'s `top` best detections (Instances: pred_boxes, scores[, pred_masks]) that
    `other` has: box IoU >= iou, |score difference| <= score_tol, mask IoU >= iou when masks; 1.0
    when neither has a detection."""
    from detectron2.structures import pairwise_iou

    ref = ref[ref.scores.argsort(descending=True)[:top]]
    if len(ref) == 0:
        return 1.0 if len(other) == 0 else 0.0
    if len(other) == 0:
        return 0.0
    ok = (pairwise_iou(ref.pred_boxes, other.pred_boxes) >= iou) & ((ref.scores[:, None] - other.scores[None]).abs() <= score_tol)
    if ref.has("pred_masks"):
        ok &= _mask_iou(ref.pred_masks, other.pred_masks) >= iou
    return ok.any(dim=1).float().mean().item()


def object_agreement(ref: List[Dict], other: List[Dict], height: int, width: int, iou: float = MATCH_IOU) -> float:
    """Fraction of `ref`'s COCO annotations (discovery output) with an `other` annotation of IoU >=
    iou: mask IoU when they carry `segmentation`, else box IoU; 1.0 when neither has any."""
    from detectron2.structures import Boxes, BoxMode, pairwise_iou

    from cad.utils.masks import decode_mask

    if not ref:
        return 1.0 if not other else 0.0
    if not other:
        return 0.0
    if "segmentation" in ref[0]:
        masks = [torch.from_numpy(np.stack([decode_mask(a["segmentation"]) for a in anns]).astype(bool)) for anns in (ref, other)]
        ious = _mask_iou(*masks)
    else:
        boxes = [Boxes(torch.tensor([BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns])) for anns in (ref, other)]
        ious = pairwise_iou(*boxes)
    return (ious >= iou).any(dim=1).float().mean().item()


def compare_outputs(kind: str, ref, other) -> Tuple[float, bool, str]:
    """(discrepancy, within tolerance, what was measured) between CPU outputs `ref` and device
    outputs `other` (moved to CPU) of one batch."""
    if kind == "rcnn":
        agree = min(detection_agreement(r["instances"], o["instances"]) for r, o in zip(ref, other))
        return agree, agree >= MATCH_FRACTION, f"matched detections (>= {MATCH_FRACTION})"
    if kind == "mask2former":
        diff = max((ref["pred_logits"].softmax(-1) - other["pred_logits"].softmax(-1)).abs().max().item(),
                   (ref["pred_masks"].sigmoid() - other["pred_masks"].sigmoid()).abs().max().item())
    else:
        diff = max((r["masks"] - o["masks"]).abs().max().item() for r, o in zip(ref, other))
    return diff, diff <= PROB_TOL, f"max abs probability difference (<= {PROB_TOL})"


def _to_cpu(x):
    if isinstance(x, torch.Tensor) or hasattr(x, "to"):
        return x.to("cpu")
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items() if k != "aux_outputs"}
    return [_to_cpu(v) for v in x]


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Float32 matmuls and convolutions without TF32 in the block (a true float32 comparison)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def training_agreement(name: str, args: argparse.Namespace, weights: Path, device: str) -> Tuple[float, bool, str]:
    """Inference of `weights` on the device and on the CPU, on 2 training inputs, compared."""
    from cad.checkpoint.loader import load_checkpoint
    from cad.engine.setup import build_cfg
    from cad.engine.trainer import TRAINER_REGISTRY

    outputs = []
    inputs = None
    for dev in ("cpu", device):
        dev_args = argparse.Namespace(**vars(args))
        dev_args.opts = [*args.opts, "MODEL.DEVICE", dev]
        cfg = build_cfg(dev_args)
        trainer_cls = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)
        if inputs is None:
            torch.manual_seed(0)
            it = iter(trainer_cls.build_test_loader(cfg, cfg.DATASETS.TRAIN[0]))
            inputs = [next(it)[0] for _ in range(2)]
        model = trainer_cls.build_model(cfg)
        load_checkpoint(model, str(weights), cfg)
        model.eval()
        with torch.no_grad(), _no_tf32():
            if TRAINING[name].outputs == "mask2former":
                out = model.predict(model.preprocess(inputs))
            else:
                out = model(inputs)
        outputs.append(_to_cpu(out))
    return compare_outputs(TRAINING[name].outputs, *outputs)


def check_training(name: str, device: str, steps: int, warmup: int, tiny: bool, work: Path, num_gpus: int) -> Dict:
    from cad.data.paths import datasets_root
    from cad.engine.launch import launch

    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    teacher = None
    if name == "gd_stage2":
        teacher = write_teacher(train_args(name, device, steps, tiny, out), out / "teacher.pth")
    args = train_args(name, device, steps, tiny, out, teacher, num_gpus)
    launch(train_process, num_gpus, args=(args, str(out / "result.json"), str(datasets_root())))
    r = json.loads((out / "result.json").read_text())
    diff, ok, what = training_agreement(name, args, out / "model_final.pth", device)
    return {"name": name, **step_summary(r["time"], r["data_time"], r["images_per_step"], warmup),
            "peak_cuda_mb": r["peak_cuda_mb"], "amp": r["amp"], "world_size": r["world_size"],
            "agreement": diff, "agrees": ok, "measure": what}


# ---------------------------------------------------------------------------------------------
# discovery methods


def _images(count: int, height: int, width: int) -> List:
    from benchdata import _object_mask
    from cad.data.synthetic import _texture
    from cad.discovery.method import DiscoveryImage

    rng = np.random.default_rng(5)
    out = []
    for i in range(count):
        image = _texture(rng, height, width)
        for _ in range(3):
            mask = _object_mask(rng, height, width)
            image[mask] = _texture(rng, height, width)[mask]
        out.append(DiscoveryImage(image_id=i + 1, file_name=f"{i}.png", image=image))
    return out


def _method(name: str, device: str, tiny: bool, work: Path, hub_weights: bool):
    from cad.backbones import save_random_checkpoint
    from cad.discovery.method import MethodOptions, method_class
    from cad.discovery.votecut import VOTECUT_MODELS

    archs = {"lost": ("dino_vits16",), "maskcut": ("dino_vitb8",), "votecut": VOTECUT_MODELS}[name]
    overrides = TINY_VIT if tiny else {}
    def weights(arch: str) -> Optional[str]:
        path = work / "vits" / f"{arch}.pth"
        return None if hub_weights else str(path if path.exists() else save_random_checkpoint(arch, path, **overrides))

    models = tuple((a, weights(a)) for a in archs)
    kwargs = {**overrides, **({"resolution": TINY_RESOLUTION[name]} if tiny and name in TINY_RESOLUTION else {})}
    return method_class(name)(MethodOptions(models=models, device=device, crf=True), **kwargs)


def check_method(name: str, device: str, num_images: int, tiny: bool, work: Path, hub_weights: bool) -> Dict:
    """Stage 1 on `device` (timed after one warm-up image) and stage 2 on CPU; then the same on
    the CPU, and the two outputs compared."""
    images = _images(num_images, *((72, 96) if tiny else (480, 640)))
    results = {}
    for dev in (device, "cpu"):
        method = _method(name, dev, tiny, work, hub_weights)
        method.stage1(images[:1])
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with _no_tf32():
            arrays = [method.stage1([im])[0] for im in images]
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        mid = time.perf_counter()
        anns = [method.stage2(im, a) for im, a in zip(images, arrays)]
        results[dev] = {"stage1_s": (mid - start) / len(images), "stage2_s": (time.perf_counter() - mid) / len(images),
                        "anns": anns, "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.startswith("cuda") else None}
    agree = min(object_agreement(c, d, im.image.shape[0], im.image.shape[1])
                for c, d, im in zip(results["cpu"]["anns"], results[device]["anns"], images))
    r = results[device]
    return {"name": name, "stage1_s_per_image": r["stage1_s"], "stage2_s_per_image": r["stage2_s"],
            "images_per_s": 1.0 / r["stage1_s"], "peak_cuda_mb": r["peak_cuda_mb"], "agreement": agree,
            "agrees": agree >= MATCH_FRACTION, "measure": f"matched objects (>= {MATCH_FRACTION})"}


def _mb(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def print_report(device: str, training: List[Dict], methods: List[Dict]) -> None:
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}")
    if training:
        print("| family | processes | AMP | s/iter | images/s | data wait | peak CUDA MiB | agreement | ok |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in training:
            print(f"| {r['name']} | {r['world_size']} | {'yes' if r['amp'] else 'no'} | {r['s_per_iter']:.3f} | {r['images_per_s']:.1f} "
                  f"| {100 * r['data_wait']:.1f} % | {_mb(r['peak_cuda_mb'])} | {r['agreement']:.3g} ({r['measure']}) "
                  f"| {'yes' if r['agrees'] else 'NO'} |")
    if methods:
        print("| method | stage 1 s/image | images/s | stage 2 (CPU) s/image | peak CUDA MiB | agreement | ok |")
        print("|---|---|---|---|---|---|---|")
        for r in methods:
            print(f"| {r['name']} | {r['stage1_s_per_image']:.3f} | {r['images_per_s']:.2f} | {r['stage2_s_per_image']:.3f} "
                  f"| {_mb(r['peak_cuda_mb'])} | {r['agreement']:.3g} ({r['measure']}) | {'yes' if r['agrees'] else 'NO'} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--num-gpus", type=int, default=1, help="training processes (NCCL on CUDA, gloo on CPU)")
    parser.add_argument("--only", nargs="+", choices=[*TRAINING, *METHODS], help="a subset of families and methods")
    parser.add_argument("--steps", type=int, default=8, help="training iterations per family")
    parser.add_argument("--warmup", type=int, default=3, help="first iterations left out of the timings")
    parser.add_argument("--images", type=int, default=2, help="images per discovery method")
    parser.add_argument("--hub-weights", action="store_true", help="official ViT weights from the torch.hub cache")
    parser.add_argument("--tiny", action="store_true", help="tiny models and inputs (the test suite)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available (use --device cpu for the CPU run)", file=sys.stderr)
        return 2
    selected = args.only or [*TRAINING, *METHODS]
    with tempfile.TemporaryDirectory(prefix="cad-gpu-check-") as tmp:
        work = Path(tmp)
        if not args.tiny:
            os.environ["DETECTRON2_DATASETS"] = str(work / "datasets")  # before cad registers tri_pd_train
            write_data(work / "datasets")
        training = [check_training(n, args.device, args.steps, args.warmup, args.tiny, work, args.num_gpus)
                    for n in TRAINING if n in selected]
        methods = [check_method(n, args.device, args.images, args.tiny, work, args.hub_weights) for n in METHODS if n in selected]
    print_report(args.device, training, methods)
    if args.json:
        print(json.dumps({"training": training, "methods": methods}))
    return 0 if all(r["agrees"] for r in training + methods) else 1


if __name__ == "__main__":
    sys.exit(main())
