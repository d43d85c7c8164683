#!/usr/bin/env python
"""Training-step cost of cad's pseudo-label cascade heads vs Detectron2's stock CascadeROIHeads.

Runs `stock`, `cad_heads` (soft targets + DropLoss) and `cad` (the same + copy-paste) in turn,
each in a fresh process (peak memory per run), on the same weights, batch and seeds; prints the
median s/iter and peak RSS of each, and the overhead of cad's operations over a stock step:
the extra time of the differing ROI-head parts (cad_heads - stock) plus what copy-paste costs the
training step (the batch fetch of `cad`: nothing, since the loader workers paste,
`cad.data.worker_batches`; their cost is measured by data_throughput.py). `cad` trains on its
trainer's pasted batch, whose extra objects add mask-head work.

All variants run the same weights and sampling seeds through the trainers' own step objects
(`SimpleTrainer.run_step`) on one mapped batch (`stock` and `cad_heads` the unpasted one), so the
difference is the cost of the soft-target/DropLoss losses, the extra matching fields and the
pasted objects. On a busy CPU the whole step is noisy, so the parts that differ are also timed on
their own: the batch fetch (`data_time`) and the ROI-head parts (`_instrument`).

example:
  tools/benchmarks/detector.py --threads 1 --iters 10 --rounds 3
"""
import argparse
import itertools
import json
import statistics
import subprocess
import sys
from typing import Dict

import torch
from detectron2.config import CfgNode

from benchlib import PhaseTimer, peak_memory_mb

DEFAULT_CONFIG = "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"

# Config overrides of each variant: Detectron2's stock cascade; cad's heads with soft targets and
# DropLoss; the same plus copy-paste (which also adds objects, hence mask-head work, to the batch).
_CAD_HEADS = ["MODEL.ROI_HEADS.NAME", "PseudoLabelCascadeROIHeads", "MODEL.ROI_MASK_HEAD.NAME",
              "PseudoLabelMaskRCNNConvUpsampleHead", "MODEL.ROI_HEADS.SOFT_TARGETS", True,
              "MODEL.ROI_HEADS.USE_DROPLOSS", True]
VARIANTS = {
    "stock": ["MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead",
              "MODEL.ROI_HEADS.SOFT_TARGETS", False, "MODEL.ROI_HEADS.USE_DROPLOSS", False, "CAD.TRAINER", "CadTrainer"],
    "cad_heads": _CAD_HEADS + ["CAD.TRAINER", "CadTrainer"],
    "cad": _CAD_HEADS + ["CAD.TRAINER", "CopyPasteTrainer"],
}


def _time_calls(obj, name: str, timer: PhaseTimer) -> None:
    """Replace bound method `obj.name` by a wrapper adding its wall time to `timer`'s "heads" phase."""
    method = getattr(obj, name)
    setattr(obj, name, lambda *args, **kwargs: timer("heads", method, *args, **kwargs))


def _instrument(model, timer: PhaseTimer) -> None:
    """Time the parts that differ between the variants: proposal labelling/matching, the box
    predictors' losses and the mask head (its convs are the same in both, so they cancel)."""
    heads = model.roi_heads
    _time_calls(heads, "label_and_sample_proposals", timer)
    _time_calls(heads, "_match_and_label_boxes", timer)
    for predictor in heads.box_predictor:
        _time_calls(predictor, "losses", timer)
    _time_calls(heads.mask_head, "forward", timer)


def variant_cfg(cfg: CfgNode, variant: str) -> CfgNode:
    """`cfg` with the overrides of `variant` (a key of `VARIANTS`), frozen."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}' (one of {sorted(VARIANTS)})")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(VARIANTS[variant])
    cfg.freeze()
    return cfg


def benchmark_step(cfg: CfgNode, variant: str, iters: int = 10, warmup: int = 2) -> Dict[str, float]:
    """s/iter and peak memory of `iters` training steps of `variant` on one fixed batch."""
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from cad.engine.trainer import TRAINER_REGISTRY

    vcfg = variant_cfg(cfg, variant)
    torch.manual_seed(0)
    reference = build_model(variant_cfg(cfg, "stock")).state_dict()
    model = build_model(vcfg)
    model.load_state_dict(reference)  # same weights in both variants (same parameter names)
    del reference
    torch.manual_seed(0)
    batch = next(iter(TRAINER_REGISTRY.get(vcfg.CAD.TRAINER).build_step_loader(vcfg)))
    optimizer = build_optimizer(vcfg, model)
    step = TRAINER_REGISTRY.get(vcfg.CAD.TRAINER).build_step_trainer(vcfg, model, itertools.repeat(batch), optimizer)
    timer = PhaseTimer()
    _instrument(model, timer)
    data = 0.0
    with EventStorage(0) as storage:
        for i in range(warmup + iters):
            if i == warmup:
                timer.reset()
            torch.manual_seed(i)  # same ROI sampling in both variants
            timer("step", step.run_step)
            if i >= warmup:
                data += storage.history("data_time").latest()  # batch fetch
            storage.iter += 1
    heads = timer.total["heads"]
    return {
        "variant": variant, "batch": len(batch), "s_per_iter": timer.total["step"] / iters,
        "data_s_per_iter": data / iters, "heads_s_per_iter": heads / iters, **peak_memory_mb(),
    }



def _cfg(args) -> CfgNode:
    """The benchmark's config: `build_cfg` (one-line `ConfigError`s) without DataLoader workers."""
    from cad.engine.setup import build_cfg

    overrides = ["DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", "/tmp/cad-benchmark-detector", *args.opts]
    return build_cfg(argparse.Namespace(config_file=args.config, opts=overrides))


def run_one(args) -> dict:
    torch.set_num_threads(args.threads)
    return benchmark_step(_cfg(args), args.one, iters=args.iters, warmup=args.warmup)


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
    from cad.engine.setup import ConfigError

    try:
        _cfg(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
