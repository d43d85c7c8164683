#!/usr/bin/env python
"""Seconds per training iteration and peak memory for one or more configs.

Example:
  tools/benchmarks/train_step.py --threads 1 2 \
      configs/MaskRCNN/mask_rcnn_R_18_FPN_synthetic.yaml \
      configs/MaskRCNN/mask_rcnn_R_50_FPN_synthetic.yaml \
      configs/MaskRCNN/cascade_mask_rcnn_R_18_FPN_synthetic.yaml
Each (config, threads) pair runs in a fresh process so peak memory is per run.

`--opts MODEL.WEIGHTS FILE` starts the steps from a trained model (loaded as `train_net` does). Time a
detector that way: its steps get slower while it learns, because its RPN then proposes objects and
the RoI heads (the mask head above all) train on more foreground proposals.
"""
import argparse
import json
import subprocess
import sys
from typing import Dict

from benchlib import PhaseTimer, peak_memory_mb


def benchmark_training(cfg, iters: int = 10, warmup: int = 3) -> Dict[str, float]:
    """Run `warmup + iters` training steps of `cfg.CAD.TRAINER` (no hooks); return s/iter and memory.

    Only the step itself is timed (data loading included, as in a real run).
    """
    from detectron2.utils.events import EventStorage

    from cad.engine.trainer import TRAINER_REGISTRY

    trainer = TRAINER_REGISTRY.get(cfg.CAD.TRAINER)(cfg)
    if cfg.MODEL.WEIGHTS:
        trainer.resume_or_load(resume=False)
    step = trainer._trainer
    timer = PhaseTimer()
    with EventStorage(0) as storage:
        for i in range(warmup + iters):
            timer("step" if i >= warmup else "warmup", step.run_step)
            storage.iter += 1
    return {"s_per_iter": timer.total["step"] / iters, **peak_memory_mb()}


def _cfg(config: str, opts):
    """The benchmark's config: `build_cfg` (one-line `ConfigError`s) without DataLoader workers."""
    from cad.engine.setup import build_cfg

    overrides = ["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", "/tmp/cad-benchmark", *opts]
    return build_cfg(argparse.Namespace(config_file=config, opts=overrides))


def run_one(config: str, threads: int, iters: int, warmup: int, opts) -> dict:
    import torch

    torch.set_num_threads(threads)
    cfg = _cfg(config, opts)
    return {"config": config, "threads": threads, "batch": cfg.SOLVER.IMS_PER_BATCH,
            **benchmark_training(cfg, iters=iters, warmup=warmup)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.configs[0], args.threads[0], args.iters, args.warmup, args.opts)))
        return 0
    from cad.engine.setup import ConfigError

    try:
        for config in args.configs:
            _cfg(config, args.opts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for config in args.configs:
        for threads in args.threads:
            cmd = [sys.executable, __file__, "--one", config, "--threads", str(threads), "--iters", str(args.iters),
                   "--warmup", str(args.warmup), "--opts", *args.opts]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return proc.returncode
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{r['config']}: threads={r['threads']} batch={r['batch']} "
                  f"{r['s_per_iter']:.3f} s/iter, peak RSS {r['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
