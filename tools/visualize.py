#!/usr/bin/env python
"""Draw ground truth, pseudo-labels or predictions on the images of a split, as PNGs.

Examples:
  tools/visualize.py --dataset synthetic_shapes_val --out vis/gt
  tools/visualize.py --dataset synthetic_shapes_val \\
      --results output/demo/inference/synthetic_shapes_val/coco_instances_results.json --out vis/pred
  tools/visualize.py --dataset imagenet_val_cls_agnostic --results pseudo.json --score-thresh 0 --out vis/pl
  tools/visualize.py --dataset synthetic_shapes_val --config-file configs/CutLER/maskcut_synthetic.yaml \\
      --score-thresh 0 --out vis/maskcut [KEY VALUE ...]

`--results` takes a COCO results list (predictions) or a COCO JSON with `annotations`
(pseudo-labels); `--config-file` instead runs the config's model (a detector with MODEL.WEIGHTS,
or a pseudo-label generator: LOST, MaskCut, VoteCut) on the first images of the split, with
trailing KEY VALUE overrides. With ground truth in the split, each PNG shows it on the left.
"""
import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="registered split name")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--results", default=None, help="COCO results/annotations JSON; omit to draw ground truth")
    source.add_argument("--config-file", default=None, help="run this config's model on the split's images and draw")
    parser.add_argument("--out", required=True, help="output folder for PNGs")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--no-gt", action="store_true", help="do not show ground truth next to the results")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (with --config-file)")
    args = parser.parse_args()

    from detectron2.data import DatasetCatalog

    import cad  # noqa: F401  (registers the splits and models)
    from cad.engine.setup import build_cfg, check_output_dir, check_weights
    from cad.errors import UserError, report
    from cad.utils.io import read_coco_results
    from cad.utils.visualize import render_ground_truth, render_predictions

    if args.dataset not in DatasetCatalog.list():
        print(f"error: unknown dataset '{args.dataset}' (see datasets/README.md)", file=sys.stderr)
        return 2
    if args.opts and not args.config_file:
        print(f"error: unrecognized arguments: {' '.join(args.opts)} (KEY VALUE overrides need --config-file)", file=sys.stderr)
        return 2
    try:
        check_output_dir(args.out, "--out")
        if args.results:
            results = read_coco_results(args.results, "--results")
        if args.config_file:
            from cad.engine.predict import predict_coco_results

            cfg = build_cfg(args)
            check_weights(cfg.MODEL.WEIGHTS)
            results = predict_coco_results(cfg, args.dataset, args.num_images)
        if args.results or args.config_file:
            paths = render_predictions(args.dataset, results, args.out, args.num_images, args.score_thresh, not args.no_gt)
        else:
            paths = render_ground_truth(args.dataset, args.out, args.num_images)
    except UserError as e:
        return report(e)
    print(f"wrote {len(paths)} PNGs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
