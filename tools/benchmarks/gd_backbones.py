#!/usr/bin/env python
"""Forward speed and peak memory of the Guided Distillation backbones (full size, random weights).

Each backbone is built from its config (configs/GuidedDistillation/coco/), in its own process so
that the peak memory is its own, and runs `--iters` forwards of a batch of `--batch` images of
`--size` x `--size` pixels (no gradient; `--train` adds the backward of the outputs' sum). Prints
one line per backbone: parameters, s/iter (wall), images/s and peak memory.

  tools/benchmarks/gd_backbones.py --size 512 --iters 3 swin_tiny r50 dinov2_base
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchlib import PhaseTimer, peak_memory_mb

COCO = Path(__file__).resolve().parents[2] / "configs" / "GuidedDistillation" / "coco"
CONFIGS = {
    "r50": "Base-R50-teacher.yaml",
    "r101": "maskformer2_R101_bs16_50ep.yaml",
    "swin_tiny": "swin/maskformer2_swin_tiny_bs16_50ep.yaml",
    "swin_small": "swin/maskformer2_swin_small_bs16_50ep.yaml",
    "swin_base": "swin/maskformer2_swin_base_IN21k_384_bs16_50ep.yaml",
    "swin_large": "swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
    "deit_base": "deit/maskformer2_deit_base_bs16_50ep.yaml",
    "vit_base": "dinov2/maskformer2_vit_large_bs16_50ep.yaml",
    "vit_large": "dinov2/maskformer2_vit_large_bs16_50ep.yaml",
    "dinov2_base": "Base-DINOv2-teacher.yaml",
    "dinov2_large": "dinov2/maskformer2_dinov2_large_bs16_50ep.yaml",
}
# The ViT-B has no official config: it is the ViT-L one with the other backbone name.
EXTRA = {"vit_base": ["MODEL.BACKBONE.NAME", "ViTBaseBackbone"]}


def measure(args) -> dict:
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from cad.config import add_cad_config

    torch.set_num_threads(args.threads)
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(COCO / CONFIGS[args.backbone]))
    cfg.merge_from_list(["MODEL.DEVICE", args.device, "CAD.VIT.WEIGHTS", "random", *EXTRA.get(args.backbone, [])])
    torch.manual_seed(0)
    backbone = build_backbone(cfg).to(args.device).train(args.train)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    timer = PhaseTimer()
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            timer.reset()
        with timer.phase("step"), torch.set_grad_enabled(args.train):
            outputs = backbone(x)
            if args.train:
                sum(o.sum() for o in outputs.values()).backward()
    memory = peak_memory_mb()
    s_per_iter = timer.total["step"] / args.iters
    return {"backbone": args.backbone, "params_m": sum(p.numel() for p in backbone.parameters()) / 1e6,
            "s_per_iter": s_per_iter, "images_per_s": args.batch / s_per_iter,
            "peak_mib": memory.get("peak_cuda_mb", memory["peak_rss_mb"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbones", nargs="*", default=list(CONFIGS), help=f"of: {', '.join(CONFIGS)}")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train", action="store_true", help="time forward + backward")
    parser.add_argument("--backbone", help=argparse.SUPPRESS)  # one measurement (child process)
    args = parser.parse_args()
    if args.backbone:
        print(json.dumps(measure(args)))
        return 0
    unknown = [b for b in args.backbones if b not in CONFIGS]
    if unknown:
        print(f"error: unknown backbone(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}", file=sys.stderr)
        return 2
    common = ["--size", str(args.size), "--batch", str(args.batch), "--iters", str(args.iters), "--warmup",
              str(args.warmup), "--threads", str(args.threads), "--device", args.device] + (["--train"] if args.train else [])
    for name in args.backbones:
        out = subprocess.run([sys.executable, __file__, "--backbone", name, *common], capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed ({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:13s} {r['params_m']:7.1f} M params  {r['s_per_iter']:7.3f} s/iter  {r['images_per_s']:7.2f} images/s  "
              f"peak {r['peak_mib']:7.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
