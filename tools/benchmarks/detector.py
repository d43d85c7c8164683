#!/usr/bin/env python
"""Training-step cost of cad's pseudo-label cascade heads vs Detectron2's stock CascadeROIHeads.

Runs `stock`, `cad_heads` (soft targets + DropLoss) and `cad` (the same + copy-paste) in turn,
each in a fresh process (peak memory per run), on the same weights, batch and seeds; prints the
median s/iter and peak RSS of each, and the overhead of cad's operations over a stock step:
the extra time of the differing ROI-head parts (cad_heads - stock) plus copy-paste itself (the
batch fetch of `cad`). `cad` also trains on the pasted objects, which adds mask-head work.

example:
  tools/benchmarks/detector.py --threads 1 --iters 10 --rounds 3
"""
import argparse
import json
import statistics
import subprocess
import sys

DEFAULT_CONFIG = "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"


def run_one(args) -> dict:
    import torch
    from detectron2.config import get_cfg

    from cad.config import add_cad_config
    from cad.engine.detector_benchmark import benchmark_step
    from cad.engine.setup import adapt_to_device

    torch.set_num_threads(args.threads)
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(args.config)
    cfg.merge_from_list(["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", "/tmp/cad-benchmark-detector", *args.opts])
    adapt_to_device(cfg)
    return benchmark_step(cfg, args.one, iters=args.iters, warmup=args.warmup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating stock/cad runs per variant")
    parser.add_argument("--opts", nargs="*", default=[], help="KEY VALUE overrides")
    parser.add_argument("--one", choices=["stock", "cad_heads", "cad"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    results = {"stock": [], "cad_heads": [], "cad": []}
    for _ in range(args.rounds):
        for variant in results:
            cmd = [sys.executable, __file__, "--one", variant, "--config", args.config, "--threads", str(args.threads),
                   "--iters", str(args.iters), "--warmup", str(args.warmup), "--opts", *args.opts]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return proc.returncode
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[variant].append(r)
            print(f"{variant:9s} batch={r['batch']} {r['s_per_iter']:.3f} s/iter (batch fetch {r['data_s_per_iter']:.4f} s, "
                  f"differing head parts {r['heads_s_per_iter']:.3f} s), peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    step = med("stock", "s_per_iter")
    print("median s/iter: " + ", ".join(f"{v} {med(v, 's_per_iter'):.3f}" for v in results)
          + "; peak RSS MB: " + ", ".join(f"{v} {max(r['peak_rss_mb'] for r in rs):.0f}" for v, rs in results.items()))
    heads = med("cad_heads", "heads_s_per_iter") - med("stock", "heads_s_per_iter")
    paste = med("cad", "data_s_per_iter")
    print(f"overhead per stock step: soft targets + DropLoss {heads:.4f} s ({100 * heads / step:.1f} %), "
          f"copy-paste {paste:.4f} s ({100 * paste / step:.1f} %), total {100 * (heads + paste) / step:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
