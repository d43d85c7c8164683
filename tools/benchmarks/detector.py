#!/usr/bin/env python
"""Training-step cost of cad's pseudo-label cascade heads vs Detectron2's stock CascadeROIHeads.

Runs `stock` and `cad` (soft targets + DropLoss + copy-paste) alternately, each in a fresh
process (peak memory per run), on the same weights, batch and seeds; prints the median s/iter,
peak RSS and the overhead of cad over stock.

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
    parser.add_argument("--one", choices=["stock", "cad"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    results = {"stock": [], "cad": []}
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
            print(f"{variant:5s} batch={r['batch']} {r['s_per_iter']:.3f} s/iter (batch fetch {r['data_s_per_iter']:.4f} s, "
                  f"differing head parts {r['heads_s_per_iter']:.3f} s), peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)

    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    mem = {v: max(r["peak_rss_mb"] for r in rs) for v, rs in results.items()}
    step = med("stock", "s_per_iter")
    parts = sum(med("cad", k) - med("stock", k) for k in ("data_s_per_iter", "heads_s_per_iter"))
    print(f"median s/iter: stock {step:.3f}, cad {med('cad', 's_per_iter'):.3f} "
          f"(whole-step difference {100 * (med('cad', 's_per_iter') / step - 1):+.1f} %)")
    print(f"overhead of the differing parts (copy-paste + soft targets + DropLoss): {parts:.4f} s/iter "
          f"= {100 * parts / step:.1f} % of the stock step; peak RSS: stock {mem['stock']:.0f} MB, cad {mem['cad']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
