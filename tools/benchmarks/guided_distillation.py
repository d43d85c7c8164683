#!/usr/bin/env python
"""Speed of one Guided Distillation (stage-2) iteration vs one supervised Mask2Former iteration.

Both run through `GuidedDistillationTrainer` on the same config and data (real loaders); each
mode runs in its own process so peak memory (max RSS on CPU, max allocated on CUDA) is its own.
Prints s/iter, the SSL/supervised ratio, peak memory and pseudo-labels per image.

  tools/benchmarks/guided_distillation.py --config-file configs/GuidedDistillation/mask2former_tiny_synthetic_student.yaml \
      --iters 20 SSL.TEACHER_CKPT output/gd_synthetic/teacher/model_final.pth
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time


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
    times = []
    with EventStorage(0) as storage:
        for i in range(args.warmup + args.iters):
            step.iter = storage.iter = cfg.SSL.BURNIN_ITER + 1 + i if args.mode == "ssl" else i  # EMA phase
            t = time.perf_counter()
            step.run_step()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
        pseudo = storage.history("ssl/pseudo_per_image").avg(args.iters) if args.mode == "ssl" else 0.0
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": args.mode, "s_per_iter": sum(times) / len(times), "peak_mib": peak, "pseudo_per_image": pseudo}


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
    results = {}
    for mode in ("supervised", "ssl"):
        cmd = [sys.executable, __file__, "--config-file", args.config_file, "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--mode", mode, *args.opts]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return out.returncode
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    sup, ssl = results["supervised"], results["ssl"]
    print(f"supervised step: {sup['s_per_iter']:.3f} s/iter, peak {sup['peak_mib']:.0f} MiB")
    print(f"SSL step       : {ssl['s_per_iter']:.3f} s/iter, peak {ssl['peak_mib']:.0f} MiB, "
          f"{ssl['pseudo_per_image']:.2f} pseudo-labels/image")
    print(f"ratio SSL/supervised: {ssl['s_per_iter'] / sup['s_per_iter']:.2f}x time, "
          f"{ssl['peak_mib'] / sup['peak_mib']:.2f}x memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
