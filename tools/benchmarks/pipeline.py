#!/usr/bin/env python
"""Benchmark the discovery pipeline: images/s of stage 1 and stage 2 (workers 1 vs 2), the
pipeline's own overhead (time outside `method.stage1/stage2`) and peak memory.

Example (random-init ViT-S/16 in the official layout, 32 generated 256x256 images, CPU):
    tools/benchmarks/pipeline.py lost --arch dino_vits16 --weights random --num-images 32
"""
import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from benchlib import PhaseTimer, peak_memory_mb
from cad.data.synthetic import SHAPES_SPLITS, render_image
from cad.discovery.method import MethodOptions, build_method
from cad.discovery.pipeline import PipelineConfig, run_stage1, run_stage2
from cad.discovery.sources import list_image_dir
from cad.utils.io import atomic_write_png


class TimedMethod:
    """Wraps a method and adds up the seconds spent inside stage1/stage2 (phases "1" and "2")."""

    def __init__(self, method):
        self.method, self.timer = method, PhaseTimer()

    def stage1(self, images):
        return self.timer("1", self.method.stage1, images)

    def stage2(self, image, arrays):
        return self.timer("2", self.method.stage2, image, arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method")
    parser.add_argument("--arch", default="dino_vits16")
    parser.add_argument("--weights", default="random", help="checkpoint, or 'random' for a random-init one")
    parser.add_argument("--images", type=Path, help="image folder (default: generated shapes)")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-crf", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="cad-bench-pipeline-"))
    try:
        weights = args.weights
        if weights == "random":
            from cad.backbones.vit import save_random_checkpoint

            weights = str(save_random_checkpoint(args.arch, tmp / f"{args.arch}.pth"))
        if args.images is None:
            split = SHAPES_SPLITS["synthetic_shapes_val"]
            for i in range(args.num_images):
                atomic_write_png(tmp / "images" / f"{i:05d}.png", render_image(split, i)[0])
        records = list_image_dir(args.images or tmp / "images")[: args.num_images]
        options = MethodOptions(models=((args.arch, weights),), device=args.device, crf=not args.no_crf)
        method = TimedMethod(build_method(args.method, options))
        cfg = PipelineConfig(args.method, options, tmp / "w1", args.chunk_size, args.batch_size, workers=1)
        wall = PhaseTimer()
        wall("1", run_stage1, cfg, records, method)
        shutil.copytree(tmp / "w1", tmp / "w2")
        wall("2, 1 worker", run_stage2, cfg, records, method)
        cfg2 = PipelineConfig(args.method, options, tmp / "w2", args.chunk_size, args.batch_size, workers=2)
        wall("2, 2 workers", run_stage2, cfg2, records)
        s1, s2_1, s2_2 = (wall.total[k] for k in ("1", "2, 1 worker", "2, 2 workers"))
        n = len(records)
        print(f"{args.method} {args.arch} on {args.device}, {n} images, batch {args.batch_size}, chunk {args.chunk_size}")
        print(f"stage 1: {n / s1:.2f} img/s ({s1:.2f} s; inside method.stage1 {method.timer.total['1']:.2f} s, "
              f"pipeline overhead {s1 - method.timer.total['1']:.2f} s)")
        print(f"stage 2, 1 worker: {n / s2_1:.2f} img/s ({s2_1:.2f} s; inside method.stage2 {method.timer.total['2']:.2f} s, "
              f"pipeline overhead {s2_1 - method.timer.total['2']:.2f} s)")
        print(f"stage 2, 2 workers: {n / s2_2:.2f} img/s ({s2_2:.2f} s, incl. worker start-up)")
        peak = peak_memory_mb(children=True)
        print(f"peak RSS: main process {peak['peak_rss_mb']:.0f} MiB, largest worker {peak['peak_children_rss_mb']:.0f} MiB")
        if "peak_cuda_mb" in peak:
            print(f"peak CUDA memory: {peak['peak_cuda_mb']:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
