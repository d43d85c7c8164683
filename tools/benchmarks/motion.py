#!/usr/bin/env python
"""DIOD / xMOD training-step benchmark on random clips: s/iter and peak memory.

No dataset is needed: each iteration feeds B random clips (uint8 frames, two moving boxes as
motion masks, a random range image for xMOD) through forward + backward + Adam step + EMA update
(self-distillation active, i.e. the most expensive stage); `--inference` times the eval forward.

examples (figures in docs/benchmarks.md):
  tools/benchmarks/motion.py --config-file configs/DIOD/diod_synthetic.yaml --iters 5
  tools/benchmarks/motion.py --config-file configs/DIOD/diod_tri_pd_burn_in.yaml --batch 1 --iters 1 --warmup 0 --inference MODEL.DEVICE cpu
"""
import argparse
import json
import sys

import torch

from benchlib import PhaseTimer, peak_memory_mb


def random_clips(cfg, batch: int, generator: torch.Generator) -> list:
    """`batch` random mapped clips at CAD.MOTION.INPUT_SIZE (frames, two moving boxes, range image)."""
    m = cfg.CAD.MOTION
    t, (h, w) = m.CLIP_LENGTH, m.INPUT_SIZE
    clips = []
    for _ in range(batch):
        motion = torch.zeros(t, h, w, dtype=torch.long)
        for obj in (1, 2):
            y, x = int(torch.randint(0, h // 2, (), generator=generator)), int(torch.randint(0, w // 2, (), generator=generator))
            for i in range(t):
                motion[i, y: y + h // 4, x + 2 * i: x + 2 * i + w // 6] = obj
        clips.append({"image": torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8, generator=generator),
                      "motion_masks": motion, "range": torch.rand(t, 4, h, w, generator=generator)})
    return clips


def benchmark_motion_step(cfg, batch: int, iters: int, warmup: int, threads: int = 0, inference: bool = False) -> dict:
    """Time `iters` self-distillation training steps (after `warmup`) on random clips, or with
    `inference` the eval-mode forward pass only."""
    from detectron2.modeling import build_model

    from cad.distillation.ema import ema_update
    from cad.distillation.motion import MotionTrainer

    if threads or cfg.CAD.NUM_THREADS:
        torch.set_num_threads(threads or cfg.CAD.NUM_THREADS)
    g = torch.Generator().manual_seed(0)
    model = build_model(cfg)
    model.start_distillation()
    model.train()
    opt = MotionTrainer.build_optimizer(cfg, model)
    clips = random_clips(cfg, batch, g)
    if inference:
        model.eval()

    def step() -> None:
        if inference:
            with torch.no_grad():
                model(clips)
            return
        loss = sum(model(clips).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(model.teachers, model.students, cfg.CAD.MOTION.EMA_KEEP_RATE)

    timer = PhaseTimer()
    for i in range(warmup + iters):
        timer("step" if i >= warmup else "warmup", step)
    return {"arch": cfg.MODEL.META_ARCHITECTURE, "input": list(cfg.CAD.MOTION.INPUT_SIZE), "frames": cfg.CAD.MOTION.CLIP_LENGTH,
            "batch": batch, "mode": "inference" if inference else "train", "threads": torch.get_num_threads(), "device": cfg.MODEL.DEVICE,
            "s_per_iter": timer.total["step"] / iters, **peak_memory_mb()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--batch", type=int, default=0, help="clips per iteration; default SOLVER.IMS_PER_BATCH")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = CAD.NUM_THREADS or torch default")
    p.add_argument("--inference", action="store_true", help="time the eval-mode forward pass instead of a training step")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args()
    from cad.engine.setup import ConfigError, build_cfg

    try:
        cfg = build_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts, train_dataset="", test_dataset=""))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = benchmark_motion_step(cfg, args.batch or cfg.SOLVER.IMS_PER_BATCH, args.iters, args.warmup, args.threads, args.inference)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
