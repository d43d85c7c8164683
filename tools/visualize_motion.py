#!/usr/bin/env python
"""PNG strips (frames / GT / slot masks) of a DIOD or xMOD model on a motion split, with --video
also captioned comparison videos (Input | Ground truth | slots, one MP4 per video, as DIOD's
create_mp4.py), and the trivial-baseline metrics of that split.

examples:
  tools/visualize_motion.py --config-file configs/DIOD/diod_synthetic.yaml \\
      --weights output/diod_synthetic/model_final.pth --num-clips 4 --out vis/diod
  tools/visualize_motion.py --config-file configs/DIOD/diod_tri_pd_ts.yaml \\
      --weights checkpoints/DIODPD_500.ckpt --num-clips 40 --video --out vis/diod_tri_pd
  tools/visualize_motion.py --config-file configs/DIOD/diod_synthetic.yaml --baselines
"""
import argparse
import json
import sys

from cad.engine.setup import build_cfg, check_weights
from cad.errors import UserError, report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="checkpoint (model_final.pth); default MODEL.WEIGHTS")
    p.add_argument("--dataset", default="", help="split; default the first of DATASETS.TEST")
    p.add_argument("--num-clips", type=int, default=4)
    p.add_argument("--out", default="vis/motion", help="output folder of the PNGs / videos")
    p.add_argument("--video", action="store_true", help="also write one captioned MP4 per video (its predicted clips in order)")
    p.add_argument("--fps", type=float, default=5.0, help="frames per second of the videos (DIOD create_mp4.py: 5)")
    p.add_argument("--baselines", action="store_true", help="print the trivial baselines' metrics instead")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args()
    if args.fps <= 0:
        print(f"error: --fps {args.fps} must be positive", file=sys.stderr)
        return 2
    try:
        return run(args)
    except UserError as e:  # bad config, dataset, weights (unreadable, non-matching, network)
        return report(e)


def run(args: argparse.Namespace) -> int:
    cfg = build_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts, train_dataset="", test_dataset=args.dataset))
    if not args.baselines:
        check_weights(args.weights or cfg.MODEL.WEIGHTS, required=True)
    dataset = cfg.DATASETS.TEST[0]
    from cad.utils.visualize_motion import evaluate_baselines, predict_clips, write_strips, write_videos

    if args.baselines:
        print(json.dumps(evaluate_baselines(cfg, dataset), indent=1))
        return 0
    from cad.engine.predict import build_loaded_model

    model = build_loaded_model(cfg, args.weights)
    results = predict_clips(model, cfg, dataset, args.num_clips)
    paths = write_strips(results, args.out)
    if args.video:
        paths += write_videos(results, args.out, cfg.MODEL.META_ARCHITECTURE, args.fps)
    for path in paths:
        print(path)
    return 0

if __name__ == "__main__":
    sys.exit(main())
