#!/usr/bin/env python
"""Loading a `coco:JSON:DIR` split (registered on the fly) vs the same JSON as a predefined split.

Generates a VoteCut-like class-agnostic COCO JSON (N images, K RLE masks with scores each; the
image files are empty placeholders, which the loader only checks for existence), then loads it in
fresh processes, alternating the two ways for --rounds rounds, and prints per way the median load
time (registration + `DatasetCatalog.get`) and its minimum, the median peak RSS of the process and the median
increase of that peak over the RSS just before loading.

Example: tools/benchmarks/file_splits.py --images 10000 --work /tmp/bench_file_splits --rounds 3
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_data(work: Path, num_images: int, anns_per_image: int, height: int = 480, width: int = 640) -> Path:
    """Write `work/images/*.jpg` (empty) and `work/ann.json`; returns the JSON path."""
    from cad.utils.masks import encode_mask

    rng = np.random.default_rng(0)
    (work / "images").mkdir(parents=True, exist_ok=True)
    masks = []
    for _ in range(16):  # a pool of RLE masks, reused (the loader's cost does not depend on their content)
        m = np.zeros((height, width), bool)
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        m[y : y + rng.integers(20, height // 2), x : x + rng.integers(20, width // 2)] = True
        masks.append((encode_mask(m), [float(v) for v in (x, y, m[y].sum(), m[:, x].sum())], float(m.sum())))
    images, annotations = [], []
    for i in range(num_images):
        name = f"{i:07d}.jpg"
        (work / "images" / name).touch()
        images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        for k in range(anns_per_image):
            rle, bbox, area = masks[(i + k) % len(masks)]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "segmentation": rle,
                                "bbox": bbox, "area": area, "iscrowd": 0, "score": round(float(rng.random()), 4)})
    path = work / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}))
    return path


def load_once(way: str, work: Path) -> dict:
    """Load the split one way in this process: seconds and peak-RSS increase (MB)."""
    from detectron2.data import DatasetCatalog

    from cad.data.coco import register_class_agnostic_coco
    from cad.data.file_splits import register_file_split

    json_file, image_root = work / "ann.json", work / "images"
    with open("/proc/self/statm") as f:
        before_mb = int(f.read().split()[1]) * resource.getpagesize() / 2**20
    start = time.perf_counter()
    if way == "registered":
        name = "bench_registered"
        register_class_agnostic_coco(name, json_file, image_root, "benchmark")
    else:
        name = register_file_split(f"coco:{json_file}:{image_root}")
    dicts = DatasetCatalog.get(name)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"way": way, "images": len(dicts), "load_s": seconds, "peak_rss_mb": peak_mb,
            "peak_rss_increase_mb": peak_mb - before_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--anns-per-image", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_file_splits"), help="data folder (reused if present)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=["registered", "file"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(load_once(args.one, args.work)))
        return
    json_file = args.work / "ann.json"
    if not json_file.is_file():
        json_file = make_data(args.work, args.images, args.anns_per_image)
    runs = {"registered": [], "file": []}
    for _ in range(args.rounds):
        for way in runs:
            out = subprocess.run([sys.executable, __file__, "--one", way, "--work", str(args.work)],
                                 capture_output=True, text=True, check=True)
            runs[way].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {"json": str(json_file), "json_mb": round(json_file.stat().st_size / 2**20, 1), "rounds": args.rounds}
    for way, rs in runs.items():
        summary[way] = {k: round(statistics.median(r[k] for r in rs), 3) for k in ("load_s", "peak_rss_mb", "peak_rss_increase_mb")}
        summary[way]["min_load_s"] = round(min(r["load_s"] for r in rs), 3)  # least disturbed by other load
        summary[way]["images"] = rs[0]["images"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
