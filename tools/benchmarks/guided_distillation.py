#!/usr/bin/env python
"""Speed of one Guided Distillation (stage-2) iteration vs one supervised Mask2Former iteration.

All modes run through `GuidedDistillationTrainer` on the same config and data (real loaders),
each in its own process so peak memory (max RSS on CPU, max allocated on CUDA) is its own:
supervised with the labeled batch, supervised with labeled + unlabeled batch (as many student
images as the SSL step), and the SSL step. Prints s/iter (wall and process CPU time), peak memory,
pseudo-labels per image and the SSL/supervised ratios.

  tools/benchmarks/guided_distillation.py --config-file configs/GuidedDistillation/mask2former_tiny_synthetic_student.yaml \
      --iters 20 SSL.TEACHER_CKPT output/gd_synthetic/teacher/model_final.pth
"""
import argparse
import json
import os
import subprocess
import sys
import time

from benchlib import PhaseTimer, peak_memory_mb


def measure(args) -> dict:
    import torch
    from detectron2.utils.events import EventStorage

    from cad.distillation.guided import GuidedDistillationTrainer
    from cad.engine.setup import build_cfg

    ns = argparse.Namespace(config_file=args.config_file, opts=args.opts + ["SSL.TRAIN_SSL", str(args.mode == "ssl")])
    cfg = build_cfg(ns)
    torch.set_num_threads(max(1, cfg.CAD.NUM_THREADS) if cfg.CAD.NUM_THREADS else torch.get_num_threads())
    torch.manual_seed(0)
    trainer = GuidedDistillationTrainer(cfg)
    if args.mode == "ssl" and cfg.SSL.TEACHER_CKPT:
        trainer.resume_or_load(resume=False)
    step = trainer._trainer
    timer = PhaseTimer()
    times, cpu_times = [], []
    with EventStorage(0) as storage:
        for i in range(args.warmup + args.iters):
            step.iter = storage.iter = cfg.SSL.BURNIN_ITER + 1 + i if args.mode == "ssl" else i  # EMA phase
            timer.reset()
            c = time.process_time()
            timer("step", step.run_step)
            if i >= args.warmup:
                times.append(timer.total["step"])
                cpu_times.append(time.process_time() - c)
        pseudo = storage.history("ssl/pseudo_per_image").avg(args.iters) if args.mode == "ssl" else 0.0
    memory = peak_memory_mb()
    peak = memory.get("peak_cuda_mb", memory["peak_rss_mb"])
    return {"mode": args.mode, "s_per_iter": sum(times) / len(times), "cpu_s_per_iter": sum(cpu_times) / len(cpu_times),
            "peak_mib": peak, "pseudo_per_image": pseudo}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mode", choices=["both", "ssl", "supervised"], default="both")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    if args.mode != "both":
        print(json.dumps(measure(args)))
        return 0
    from cad.engine.setup import ConfigError, build_cfg

    try:
        cfg = build_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    both = cfg.SOLVER.IMS_PER_BATCH + cfg.SSL.IMS_PER_BATCH_UNLABELED
    runs = [  # (label, mode, extra overrides)
        ("supervised, labeled batch", "supervised", []),
        (f"supervised, batch {both} (= SSL student images)", "supervised", ["SOLVER.IMS_PER_BATCH", str(both)]),
        ("SSL (teacher + student)", "ssl", []),
    ]
    results = []
    for label, mode, extra in runs:
        cmd = [sys.executable, __file__, "--config-file", args.config_file, "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--mode", mode, *args.opts, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return out.returncode
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{label}: {r['s_per_iter']:.3f} s/iter wall, {r['cpu_s_per_iter']:.3f} s/iter CPU (process time), "
              f"peak {r['peak_mib']:.0f} MiB, {r['pseudo_per_image']:.2f} pseudo-labels/image")
    ssl = results[-1]
    # CPU time is robust to other processes sharing the machine; wall time is what a user waits
    for label, sup in (("labeled batch", results[0]), (f"batch {both}", results[1])):
        print(f"SSL / supervised ({label}): {ssl['s_per_iter'] / sup['s_per_iter']:.2f}x wall, "
              f"{ssl['cpu_s_per_iter'] / sup['cpu_s_per_iter']:.2f}x CPU time, {ssl['peak_mib'] / sup['peak_mib']:.2f}x memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
