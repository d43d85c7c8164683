#!/usr/bin/env python
"""Benchmark the discovery pipeline: images/s of stage 1 and stage 2 (workers 1 vs 2), the
pipeline's own overhead (time outside `method.stage1/stage2`) and peak memory.

Example (random-init ViT-S/16 in the official layout, 32 generated 256x256 images, CPU):
    tools/benchmarks/pipeline.py lost --arch dino_vits16 --weights random --num-images 32
"""
import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from cad.data.synthetic import SHAPES_SPLITS, render_image
from cad.discovery.method import MethodOptions, build_method
from cad.discovery.pipeline import PipelineConfig, run_stage1, run_stage2
from cad.discovery.sources import list_image_dir
from cad.utils.io import atomic_write_png


class TimedMethod:
    """Wraps a method and adds up the seconds spent inside stage1/stage2."""

    def __init__(self, method):
        self.method, self.seconds = method, {"1": 0.0, "2": 0.0}

    def stage1(self, images):
        t = time.perf_counter()
        out = self.method.stage1(images)
        self.seconds["1"] += time.perf_counter() - t
        return out

    def stage2(self, image, arrays):
        t = time.perf_counter()
        out = self.method.stage2(image, arrays)
        self.seconds["2"] += time.perf_counter() - t
        return out


def _peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


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
        t = time.perf_counter()
        run_stage1(cfg, records, method)
        s1 = time.perf_counter() - t
        shutil.copytree(tmp / "w1", tmp / "w2")
        t = time.perf_counter()
        run_stage2(cfg, records, method)
        s2_1 = time.perf_counter() - t
        t = time.perf_counter()
        run_stage2(PipelineConfig(args.method, options, tmp / "w2", args.chunk_size, args.batch_size, workers=2), records)
        s2_2 = time.perf_counter() - t
        n = len(records)
        print(f"{args.method} {args.arch} on {args.device}, {n} images, batch {args.batch_size}, chunk {args.chunk_size}")
        print(f"stage 1: {n / s1:.2f} img/s ({s1:.2f} s; inside method.stage1 {method.seconds['1']:.2f} s, "
              f"pipeline overhead {s1 - method.seconds['1']:.2f} s)")
        print(f"stage 2, 1 worker: {n / s2_1:.2f} img/s ({s2_1:.2f} s; inside method.stage2 {method.seconds['2']:.2f} s, "
              f"pipeline overhead {s2_1 - method.seconds['2']:.2f} s)")
        print(f"stage 2, 2 workers: {n / s2_2:.2f} img/s ({s2_2:.2f} s, incl. worker start-up)")
        print(f"peak RSS: main process {_peak_rss_mib(resource.RUSAGE_SELF):.0f} MiB, "
              f"largest worker {_peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB")
        if torch.cuda.is_available():
            print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
