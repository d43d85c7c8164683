#!/usr/bin/env python
"""LOST speed: images/s, ViT forward vs LOST time per image, peak memory (random-init weights).

Example: tools/benchmarks/lost.py --arch dino_vits16 --size 480 480 --threads 1
"""
import argparse
import json
import sys
from typing import Dict

import numpy as np
import torch

from benchlib import PhaseTimer, peak_memory_mb
from cad.backbones.features import extract_features, preprocess_lost
from cad.backbones.vit import build_vit
from cad.discovery.lost import lost_multi


def benchmark_lost(
    arch: str = "dino_vits16",
    height: int = 480,
    width: int = 480,
    images: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    max_objects: int = 1,
    amp=None,
) -> Dict[str, float]:
    """Run LOST on `images` random images (one at a time, as full-resolution LOST does) with a
    random-init `arch`; return seconds per image of the forward and of LOST, images/s and peak memory."""
    rss_before = peak_memory_mb()["peak_rss_mb"]
    model = build_vit(arch, "random", device=device)
    patch = int(model.patch_embed.patch_size[0])
    rng = np.random.default_rng(0)
    timer = PhaseTimer()
    for i in range(warmup + images):
        if i == warmup:
            timer.reset()
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        batch = preprocess_lost(image, patch)[None].to(device)
        feats = timer("forward", extract_features, model, batch, amp=amp)
        timer("lost", lost_multi, feats.keys[0], feats.grid, patch, (height, width), max_objects=max_objects)
    forward, lost_time = timer.total["forward"] / images, timer.total["lost"] / images
    return {
        "arch": arch,
        "size": f"{height}x{width}",
        "patches": (height // patch + (height % patch > 0)) * (width // patch + (width % patch > 0)),
        "threads": torch.get_num_threads(),
        "forward_s": forward,
        "lost_s": lost_time,
        "images_per_s": 1.0 / (forward + lost_time),
        **peak_memory_mb(),
        "rss_before_mb": rss_before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="dino_vits16")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 480], metavar=("H", "W"))
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-objects", type=int, default=1, help="> 1: the multi-object variant")
    parser.add_argument("--amp", choices=["fp16", "bf16"], default=None, help="autocast on CUDA")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = benchmark_lost(args.arch, *args.size, args.images, args.warmup, args.device, args.max_objects, args.amp)
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"LOST {r['arch']} {r['size']} ({r['patches']} patches) on {args.device}, {r['threads']} threads: "
        f"{r['images_per_s']:.2f} images/s; forward {1000 * r['forward_s']:.1f} ms/image, "
        f"LOST {1000 * r['lost_s']:.1f} ms/image ({100 * r['lost_s'] / r['forward_s']:.1f}% of the forward); "
        f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['rss_before_mb']:.0f} MB before building the ViT)" + (f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
