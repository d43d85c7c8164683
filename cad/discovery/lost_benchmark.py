"""Timing of LOST: ViT forward vs LOST itself, images/s and peak memory (tools/benchmarks/lost.py)."""
import resource
import time
from typing import Dict

import numpy as np
import torch

from cad.backbones.features import extract_features, preprocess_lost
from cad.backbones.vit import build_vit
from cad.discovery.lost import lost_multi


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    model = build_vit(arch, "random", device=device)
    patch = int(model.patch_embed.patch_size[0])
    rng = np.random.default_rng(0)
    forward_s, lost_s = [], []
    for i in range(warmup + images):
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        batch = preprocess_lost(image, patch)[None].to(device)
        _sync(device)
        start = time.perf_counter()
        feats = extract_features(model, batch, amp=amp)
        _sync(device)
        middle = time.perf_counter()
        lost_multi(feats.keys[0], feats.grid, patch, (height, width), max_objects=max_objects)
        _sync(device)
        end = time.perf_counter()
        if i >= warmup:
            forward_s.append(middle - start)
            lost_s.append(end - middle)
    forward, lost_time = float(np.mean(forward_s)), float(np.mean(lost_s))
    result = {
        "arch": arch,
        "size": f"{height}x{width}",
        "patches": (height // patch + (height % patch > 0)) * (width // patch + (width % patch > 0)),
        "threads": torch.get_num_threads(),
        "forward_s": forward,
        "lost_s": lost_time,
        "images_per_s": 1.0 / (forward + lost_time),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_before_mb": rss_before,
    }
    if device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result
