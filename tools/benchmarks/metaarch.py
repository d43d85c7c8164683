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

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", default="", help="split (default: the config's first DATASETS.TEST)")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cad.engine.predict import benchmark_inference
    from cad.engine.setup import build_cfg

    args.test_dataset = args.dataset
    cfg = build_cfg(args)
    stats = benchmark_inference(cfg, cfg.DATASETS.TEST[0], args.num_images)
    print(json.dumps({"config": args.config_file, "dataset": cfg.DATASETS.TEST[0], "device": cfg.MODEL.DEVICE,
                      "threads": args.threads, **{k: round(v, 4) for k, v in stats.items()}}))


if __name__ == "__main__":
    main()
