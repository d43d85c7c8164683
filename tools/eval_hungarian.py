#!/usr/bin/env python
"""Hungarian-matched VOC AP of a class-aware detector trained on pseudo-classes (LOST+OD), from a
predictions file alone (valeoai/LOST tools/evaluate_unsupervised_detection_voc.py).

Prints the per-class AP50 | AP | AP75 with the matched cluster, the means and the class -> cluster
mapping, and writes them as JSON. The predictions are a COCO results list (`category_id` = cluster;
e.g. OUTPUT_DIR/inference/coco_instances_results.json of tools/train_net.py, or the official
script's input); the ground truth is a registered split with classes (default voc07_test_lost_od)
or a COCO JSON (`--gt`).

Example: tools/eval_hungarian.py --pred output/lost_od_voc07/inference/coco_instances_results.json
"""
import argparse
import logging
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, type=Path, help="COCO results list (image_id, category_id = cluster, bbox, score)")
    gt = parser.add_mutually_exclusive_group()
    gt.add_argument("--dataset", default="voc07_test_lost_od", help="registered split with classes (default voc07_test_lost_od)")
    gt.add_argument("--gt", type=Path, help="ground-truth COCO JSON instead of --dataset (iscrowd/difficult objects ignored)")
    parser.add_argument("--num-clusters", type=int, help="the detector's K (clusters without detections score 0); "
                        "ids are 0..K-1 when the file has a 0, else 1..K (default: the ids in the file)")
    parser.add_argument("--out", type=Path, help="output JSON (default: next to --pred, hungarian_matching.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    import cad  # noqa: F401  (registers the predefined splits)
    from detectron2.data import DatasetCatalog

    from cad.data.paths import DatasetMissingError
    from cad.evaluation.hungarian import MATCHING_FILE, dataset_gt, detections_from_results, evaluate_hungarian, gt_from_coco
    from cad.utils.io import atomic_write_json, read_json

    try:
        results = read_json(args.pred, "--pred")
        if not isinstance(results, list):
            raise ValueError(f"--pred '{args.pred}' is not a COCO results list")
        if not args.gt and args.dataset not in DatasetCatalog.list():
            raise ValueError(f"dataset '{args.dataset}' is not registered")
        truth = gt_from_coco(read_json(args.gt, "--gt")) if args.gt else dataset_gt(args.dataset)
        clusters = None
        if args.num_clusters:
            first = 0 if any(r["category_id"] == 0 for r in results) else 1
            clusters = range(first, first + args.num_clusters)
        result = evaluate_hungarian(truth, detections_from_results(results, truth.image_keys), clusters)
    except (ValueError, KeyError, DatasetMissingError) as e:
        print(f"error: {e}" if not isinstance(e, KeyError) else f"error: missing key {e} in --pred or --gt", file=sys.stderr)
        return 2
    print(result.table())
    print(f"Class to cluster mapping: {result.class_to_cluster}")
    print(" ".join(f"{k}={v:.2f}" for k, v in list(result.metrics().items())[:3]))
    out = args.out or args.pred.with_name(MATCHING_FILE)
    atomic_write_json(out, result.to_json())
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
