#!/usr/bin/env python
"""DIOD / xMOD training-step benchmark on random clips: s/iter and peak memory.

No dataset is needed: each iteration feeds B random clips (uint8 frames, two moving boxes as
motion masks, a random range image for xMOD) through forward + backward + Adam step + EMA update
(self-distillation active, i.e. the most expensive stage).

examples (the README figures):
  tools/benchmarks/motion.py --config-file configs/DIOD/diod_synthetic.yaml --iters 5
  tools/benchmarks/motion.py --config-file configs/DIOD/diod_tri_pd_burn_in.yaml --batch 1 --iters 1 --warmup 1 MODEL.DEVICE cpu
"""
import argparse
import json
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--batch", type=int, default=0, help="clips per iteration; default SOLVER.IMS_PER_BATCH")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = CAD.NUM_THREADS or torch default")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args()
    from cad.engine.setup import ConfigError, build_cfg

    try:
        cfg = build_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts, train_dataset="", test_dataset=""))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from cad.distillation.motion import benchmark_motion_step

    res = benchmark_motion_step(cfg, args.batch or cfg.SOLVER.IMS_PER_BATCH, args.iters, args.warmup, args.threads)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
