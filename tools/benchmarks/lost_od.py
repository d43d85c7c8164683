#!/usr/bin/env python
"""LOST+OD speed: crop features (objects/s), k-means, and the Hungarian-matched VOC evaluation at a
given scale (random-init ViT, random boxes and detections).

Example (the figures of docs/benchmarks.md, "Discovery"): tools/benchmarks/lost_od.py --objects 30 --threads 1
"""
import argparse
import json
import sys
import time
from typing import Dict

import numpy as np
import torch

from benchlib import PhaseTimer, peak_memory_mb
from cad.backbones.vit import DINO_INTERPOLATE_OFFSET, build_vit
from cad.discovery.cluster import cluster_features, crop_features
from cad.evaluation.hungarian import VOCDetections, VOCGroundTruth, evaluate_hungarian


def benchmark_clustering(objects: int = 50, arch: str = "dino_vits16", k: int = 20, kmeans_objects: int = 5011,
                         device: str = "cpu", **vit_overrides) -> Dict[str, float]:
    """Crop features of `objects` random boxes of 500x375 images (one per image, as LOST's boxes)
    and k-means of `kmeans_objects` random unit features (VOC07 trainval has 5011 LOST boxes);
    `vit_overrides` shrink the ViT (tests)."""
    model = build_vit(arch, "random", device=device, **vit_overrides)
    model.interpolate_offset = DINO_INTERPOLATE_OFFSET
    rng = np.random.default_rng(0)
    timer = PhaseTimer()
    for _ in range(objects):
        image = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
        x0, y0 = rng.uniform(0, 250), rng.uniform(0, 180)
        box = np.array([[x0, y0, x0 + rng.uniform(40, 250), y0 + rng.uniform(40, 190)]])
        timer("crop_features", crop_features, model, image, box, device=device)
    feats = rng.normal(size=(kmeans_objects, model.embed_dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    timer("kmeans", cluster_features, feats, k)
    return {"objects_per_s": objects / timer.total["crop_features"], "kmeans_s": timer.total["kmeans"],
            "kmeans_objects": kmeans_objects, **peak_memory_mb()}


def benchmark_hungarian(images: int = 4952, classes: int = 20, clusters: int = 20, dets_per_image: int = 100) -> Dict[str, float]:
    """The matched evaluation of `images` x `dets_per_image` random detections over `clusters`
    against 1-4 random ground-truth boxes per image of `classes` classes (VOC07 test: 4952 images)."""
    rng = np.random.default_rng(0)
    per_image = rng.integers(1, 5, images)
    image = np.repeat(np.arange(images), per_image)
    xy = rng.uniform(0, 300, (len(image), 2))
    gt = VOCGroundTruth(list(range(images)), [f"c{i}" for i in range(classes)], image, rng.integers(0, classes, len(image)),
                        np.hstack([xy, xy + rng.uniform(20, 200, (len(image), 2))]), rng.random(len(image)) < 0.1)
    n = images * dets_per_image
    dxy = rng.uniform(0, 300, (n, 2))
    dets = VOCDetections(np.repeat(np.arange(images), dets_per_image), rng.integers(0, clusters, n), rng.random(n),
                         np.hstack([dxy, dxy + rng.uniform(20, 200, (n, 2))]))
    start = time.perf_counter()
    result = evaluate_hungarian(gt, dets, range(clusters))
    return {"hungarian_s": time.perf_counter() - start, "detections": n, "AP50": result.metrics()["AP50"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=50, help="crops whose features are timed")
    parser.add_argument("--kmeans-objects", type=int, default=5011)
    parser.add_argument("--eval-images", type=int, default=4952)
    parser.add_argument("--eval-dets-per-image", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    r = {**benchmark_clustering(args.objects, kmeans_objects=args.kmeans_objects, device=args.device),
         **benchmark_hungarian(args.eval_images, dets_per_image=args.eval_dets_per_image)}
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"clustering: {r['objects_per_s']:.1f} crop features/s on {args.device} ({torch.get_num_threads()} threads), "
          f"k-means (k=20) of {r['kmeans_objects']} objects {r['kmeans_s']:.2f} s; Hungarian-matched VOC evaluation of "
          f"{r['detections']} detections: {r['hungarian_s']:.1f} s; peak RSS {r['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
