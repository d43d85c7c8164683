#!/usr/bin/env python
"""Benchmark a model's inference as tools/train_net.py --eval-only runs it: images/s of the forward,
data loading s/image, the share of time a pseudo-label meta-architecture spends outside its
discovery method, and peak memory.

Examples (CPU, generated data; the synthetic configs use small random ViTs):
    tools/benchmarks/metaarch.py --config-file configs/LOST/lost_synthetic.yaml --num-images 16
    tools/benchmarks/metaarch.py --config-file configs/CutLER/maskcut_synthetic.yaml \\
        CAD.DISCOVERY.ARCHS "['dino_vitb8']" CAD.DISCOVERY.WEIGHTS "['random']" CAD.DISCOVERY.VIT_DEPTH 0 \\
        CAD.DISCOVERY.VIT_EMBED_DIM 0 CAD.DISCOVERY.VIT_NUM_HEADS 0 CAD.DISCOVERY.RESOLUTION 480
"""
import argparse
import json
import sys
from typing import Dict

import torch

from benchlib import PhaseTimer, peak_memory_mb


def benchmark_inference(cfg, dataset_name: str, num_images: int, warmup: int = 1) -> Dict[str, float]:
    """Inference speed of the config's model on `num_images` images of a split (after `warmup`).

    Returns images/s of the model's forward (data loading excluded), data loading s/image, and for
    pseudo-label meta-architectures the share of the forward spent outside the discovery method
    (`overhead_pct`: image conversion and `Instances`), plus peak memory (`peak_memory_mb`).
    """
    from detectron2.data import DatasetCatalog, build_detection_test_loader

    from cad.data.mapper import CadDatasetMapper
    from cad.engine.predict import build_loaded_model

    model = build_loaded_model(cfg)
    timer = PhaseTimer()
    method = getattr(model, "method", None)
    if method is not None:  # time the discovery method inside the forward
        for name in ("stage1", "stage2"):
            setattr(method, name, lambda *args, _original=getattr(method, name): timer("method", _original, *args))
    dicts = DatasetCatalog.get(dataset_name)[: warmup + num_images]
    loader = iter(build_detection_test_loader(dicts, mapper=CadDatasetMapper(cfg, is_train=False)))
    with torch.no_grad():
        for i in range(len(dicts)):
            if i == warmup:
                timer.reset()
            inputs = timer("loading", next, loader)
            timer("forward", model, inputs)
    n = max(1, len(dicts) - warmup)
    forward, loading = timer.total["forward"], timer.total["loading"]
    out = {"images": n, "images_per_s": n / forward, "loading_s_per_image": loading / n}
    if method is not None:
        out["overhead_pct"] = 100.0 * (forward - timer.total.get("method", 0.0)) / forward
    return {**out, **peak_memory_mb()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", default="", help="split (default: the config's first DATASETS.TEST)")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cad.engine.setup import ConfigError, build_cfg

    args.test_dataset = args.dataset
    try:
        cfg = build_cfg(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = benchmark_inference(cfg, cfg.DATASETS.TEST[0], args.num_images)
    print(json.dumps({"config": args.config_file, "dataset": cfg.DATASETS.TEST[0], "device": cfg.MODEL.DEVICE,
                      "threads": args.threads, **{k: round(v, 4) for k, v in stats.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
