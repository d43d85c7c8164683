#!/usr/bin/env python
"""Class-agnostic AP/AR of pseudo-labels against ground truth (both COCO JSON).

Example: tools/eval_pseudo_masks.py --gt datasets/coco/annotations/instances_val2017.json \
    --pred pseudo_val2017.json --iou-type segm --out metrics.json
"""
import argparse
import sys
from pathlib import Path

from cad.evaluation.pseudo_masks import evaluate_pseudo_masks
from cad.utils.io import atomic_write_json, read_coco_results, read_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gt", required=True, type=Path, help="ground-truth COCO JSON (any categories)")
    parser.add_argument("--pred", required=True, type=Path, help="pseudo-label COCO JSON, or a COCO results list")
    parser.add_argument("--iou-type", default="segm", choices=["segm", "bbox"], help="mask or box IoU (default segm)")
    parser.add_argument("--out", type=Path, help="metrics JSON (default: next to --pred, *_metrics_<iou-type>.json)")
    args = parser.parse_args(argv)
    try:
        gt, pred = read_json(args.gt, "--gt"), read_coco_results(args.pred, "--pred")
        if not isinstance(gt, dict) or not {"images", "annotations"} <= set(gt):
            raise ValueError(f"--gt '{args.gt}' is not a COCO annotation file (needs 'images' and 'annotations')")
        metrics = evaluate_pseudo_masks(gt, pred, args.iou_type)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}" if isinstance(e, ValueError) else f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(" ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    out = args.out or args.pred.with_name(f"{args.pred.stem}_metrics_{args.iou_type}.json")
    atomic_write_json(out, {"iou_type": args.iou_type, "gt": str(args.gt), "pred": str(args.pred), **metrics})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
