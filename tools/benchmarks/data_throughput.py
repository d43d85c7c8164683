#!/usr/bin/env python
"""Data throughput of every training family: what one loader worker sustains, and what the training
process spends per step outside the model (waiting for its batch, plus any in-process batch work).

Families (paper configs, per-GPU batch, generated data at the papers' sizes, benchdata.py):
  cascade  CuVLER Cascade Mask R-CNN on pseudo-masks: 2 images of 800x1067 (INPUT.MIN_SIZE_TRAIN 800),
           10 masks each; copy-paste on (DATALOADER.COPY_PASTE_RATE 1) and off (0)
  gd       Guided Distillation stage 2: 2 labeled (Mask2Former LSJ) + 2 unlabeled (weak + strong views)
           images of 480x640 with 7 masks each (COCO's mean)
  diod     DIOD on TRI-PD: 8 clips of 5 frames (1216x1936 PNG -> 480x968) with motion masks
  xmod     xMOD on TRI-PD: 4 clips, plus the range image projected from each frame's depth

For each family:
- `worker_img_s`: images (clip frames for diod/xmod) per second delivered by ONE worker (a loader
  with DATALOADER.NUM_WORKERS 1 drained as fast as it delivers, after `--warmup` batches);
- per step, with 0 and 2 workers: `wait_ms` (median and mean wall time the training process spends
  fetching its batch, the `data_time` of Detectron2's trainers) and `cpu_ms` (the training
  process's CPU time in that fetch: mapping and copy-paste with 0 workers, receiving the batch
  with workers). With workers the model step is simulated by sleeping the
  paper's step time (`STEP_TIME`), which leaves the CPU to the workers, as a GPU step would;
- `workers_per_gpu`: the worker processes one GPU needs so that its loader keeps up with the
  paper's step time (images per step / worker images/s / step time, rounded up; gd counts the
  labeled and the unlabeled loader).

The loader is the one the trainer's step iterates (`build_step_loader`: for CopyPasteTrainer the
loader whose workers map and paste whole batches).

examples:
  tools/benchmarks/data_throughput.py                        # every family (docs/benchmarks.md)
  tools/benchmarks/data_throughput.py --families cascade --steps 30
"""
import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Family:
    config: str
    opts: Tuple[str, ...]
    images_per_step: Tuple[int, ...]  # per loader of the step (gd: labeled, unlabeled); frames for clips
    step_time: float  # s, the paper's training step at this per-GPU batch (STEP_TIME_SOURCES)
    tiny_opts: Tuple[str, ...]  # `--tiny`: small inputs
    copy_paste: bool = False


# The papers' step times (s/iter at the per-GPU batch above) and where they come from.
STEP_TIME_SOURCES = {
    "cascade": "Detectron2 MODEL_ZOO.md, Cascade R-CNN R50-FPN 1x: 0.317 s/iter, 8 V100, 2 images/GPU",
    "gd": "Mask2Former R50 COCO instance, 50 epochs (368750 it) in ~3 days on 8 V100 "
          "(facebookresearch/Mask2Former#9) = 0.70 s/iter for 2 images/GPU; stage 2 runs the student on "
          "2 labeled + 2 unlabeled images and the teacher on 2: estimated 2x = 1.4 s",
    "diod": "Bao et al. 2022 (the model and TRI-PD recipe DIOD builds on), 500 epochs of 150 it in ~3 days on "
            "4 A100 (zpbao/Discovery_Obj_Move#3) = 3.46 s/iter for the batch of 8 clips (DataParallel, one process)",
    "xmod": "no published figure; assumed equal to DIOD's step (two slot networks on 4 clips instead of one on 8)",
}
FAMILIES = {
    "cascade": Family("configs/CuVLER/cascade_mask_rcnn_R_50_FPN_votecut_cad.yaml",
                      ("DATASETS.TRAIN", "('bench_pseudo',)", "SOLVER.IMS_PER_BATCH", "2",
                       "INPUT.MIN_SIZE_TRAIN", "(800,)", "INPUT.MAX_SIZE_TRAIN", "1333"), (2,), 0.317,
                      ("INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128"), copy_paste=True),
    "gd": Family("configs/GuidedDistillation/coco/r50_student_1pct.yaml",
                 ("DATASETS.TRAIN", "('bench_coco',)", "SSL.PERCENTAGE", "100", "SSL.DATASETS_UNLABELED", "('bench_coco',)",
                  "SSL.UNLABELED_INCLUDES_LABELED", "False", "SOLVER.IMS_PER_BATCH", "2",
                  "SSL.IMS_PER_BATCH_UNLABELED", "2"), (2, 2), 1.4, ("INPUT.IMAGE_SIZE", "64")),
    "diod": Family("configs/DIOD/diod_tri_pd_burn_in.yaml", ("SOLVER.IMS_PER_BATCH", "8"), (40,), 3.46,
                   ("CAD.MOTION.INPUT_SIZE", "(32,64)")),
    "xmod": Family("configs/xMOD/xmod_tri_pd.yaml", ("SOLVER.IMS_PER_BATCH", "4", "MODEL.WEIGHTS", ""), (20,), 3.46,
                   ("CAD.MOTION.INPUT_SIZE", "(32,64)")),
}
# Small sizes for the test suite (`--tiny`): (height, width) of images and of TRI-PD frames.
SIZES = {"full": {"pseudo": (800, 1067), "coco": (480, 640), "frames": (1216, 1936)},
         "tiny": {"pseudo": (96, 128), "coco": (64, 96), "frames": (64, 128)}}


def write_data(root: Path, tiny: bool) -> None:
    """The generated splits of every family under `root` ($DETECTRON2_DATASETS of this process)."""
    from benchdata import write_instance_coco, write_tri_pd

    sizes = SIZES["tiny" if tiny else "full"]
    n = 4 if tiny else 8
    write_instance_coco(root / "bench_pseudo", "bench_pseudo", n, *sizes["pseudo"], 3 if tiny else 10, seed=1)
    write_instance_coco(root / "bench_coco", "bench_coco", n, *sizes["coco"], 3 if tiny else 7, seed=2)
    write_tri_pd(root, 2 if tiny else 4, 6 if tiny else 10, *sizes["frames"], seed=3)


def build_cfg(family: Family, workers: int, copy_paste: bool, tiny: bool):
    from cad.engine.setup import build_cfg as cad_build_cfg

    opts = [*family.opts, "DATALOADER.NUM_WORKERS", str(workers), "SOLVER.REFERENCE_WORLD_SIZE", "0",
            "SOLVER.AMP.ENABLED", "False", "SEED", "0", "OUTPUT_DIR", tempfile.gettempdir()]
    if family.copy_paste:
        opts += ["DATALOADER.COPY_PASTE_RATE", "1.0" if copy_paste else "0.0"]
    if tiny:
        opts += family.tiny_opts
    return cad_build_cfg(argparse.Namespace(config_file=str(REPO / family.config), opts=opts))


def step_loaders(cfg) -> List:
    """What one training step draws from: the loader(s) the trainer's step object iterates."""
    import torch
    from detectron2.utils.env import seed_all_rng

    from cad.engine.trainer import TRAINER_REGISTRY

    seed_all_rng(0)
    trainer_cls = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)
    if cfg.CAD.TRAINER == "GuidedDistillationTrainer" and cfg.SSL.TRAIN_SSL:
        from cad.distillation.guided import build_unlabeled_loader

        return [trainer_cls.build_train_loader(cfg), build_unlabeled_loader(cfg)]
    model = torch.nn.Linear(1, 1)
    loader = trainer_cls.build_step_loader(cfg)
    step = trainer_cls.build_step_trainer(cfg, model, loader, torch.optim.SGD(model.parameters(), lr=0.0))
    return [step.data_loader]


def worker_throughput(family: Family, loader_index: int, steps: int, warmup: int, tiny: bool, copy_paste: bool = True) -> float:
    """Images per second one worker of loader `loader_index` delivers."""
    it = iter(step_loaders(build_cfg(family, 1, copy_paste, tiny))[loader_index])
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    elapsed = time.perf_counter() - start
    del it
    return steps * family.images_per_step[loader_index] / elapsed


def step_costs(family: Family, workers: int, copy_paste: bool, steps: int, warmup: int, tiny: bool, step_time: float) -> Dict:
    """Per-step wall wait and CPU time of the training process fetching its batch(es); with workers,
    a sleep of `step_time` stands for the model step between fetches."""
    iters = [iter(loader) for loader in step_loaders(build_cfg(family, workers, copy_paste, tiny))]
    waits, cpus = [], []
    for i in range(warmup + steps):
        wall, cpu = time.perf_counter(), time.process_time()
        for it in iters:
            next(it)
        if i >= warmup:
            waits.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        if workers:
            time.sleep(step_time)
    del iters
    return {"wait_ms_median": 1e3 * statistics.median(waits), "wait_ms_mean": 1e3 * statistics.fmean(waits),
            "cpu_ms_mean": 1e3 * statistics.fmean(cpus)}


def run_family(name: str, steps: int, warmup: int, tiny: bool, step_time: float = None) -> Dict:
    family = FAMILIES[name]
    step_time = family.step_time if step_time is None else step_time
    paste = (True, False) if family.copy_paste else (False,)
    rates = [worker_throughput(family, i, steps, warmup, tiny) for i in range(len(family.images_per_step))]
    row = {"family": name, "images_per_step": list(family.images_per_step), "worker_img_s": rates,
           "step_time_s": step_time, "step_time_source": STEP_TIME_SOURCES[name],
           "workers_per_gpu": sum(math.ceil(n / r / step_time) for n, r in zip(family.images_per_step, rates))}
    if family.copy_paste:
        row["worker_img_s_no_copy_paste"] = worker_throughput(family, 0, steps, warmup, tiny, copy_paste=False)
    row["steps"] = [{"workers": w, "copy_paste": cp, **step_costs(family, w, cp, steps, warmup, tiny, step_time)}
                    for cp in paste for w in (0, 2)]
    return row


def print_rows(rows: List[Dict]) -> None:
    for r in rows:
        extra = f" (no copy-paste: {r['worker_img_s_no_copy_paste']:.1f})" if "worker_img_s_no_copy_paste" in r else ""
        print(f"{r['family']}: one worker {' + '.join(f'{x:.1f}' for x in r['worker_img_s'])} img/s{extra}; "
              f"step {r['step_time_s']} s needs {r['workers_per_gpu']} workers per GPU")
        for s in r["steps"]:
            cp = {True: "copy-paste on ", False: "copy-paste off"}[s["copy_paste"]] if "worker_img_s_no_copy_paste" in r else ""
            print(f"  {cp} {s['workers']} workers: wait {s['wait_ms_median']:.1f} ms median "
                  f"({s['wait_ms_mean']:.1f} mean), training-process CPU {s['cpu_ms_mean']:.1f} ms per step")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=4, help="batches drawn before timing")
    parser.add_argument("--step-time", type=float, help="simulated model step in s (default: each family's paper step)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--tiny", action="store_true", help="small images and clips (the test suite)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cad-data-throughput-") as root:
        os.environ["DETECTRON2_DATASETS"] = root  # before cad registers its splits
        import torch

        torch.set_num_threads(args.threads)
        write_data(Path(root), args.tiny)
        rows = [run_family(name, args.steps, args.warmup, args.tiny, args.step_time) for name in args.families]
    print(json.dumps(rows) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
