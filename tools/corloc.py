#!/usr/bin/env python
"""CorLoc of any predictions file on a registered split (valeoai/LOST main_corloc_evaluation.py):
the top-scoring box of each image counts when its IoU with a ground-truth box is >= 0.5.

--pred takes a COCO results list (tools/train_net.py's coco_instances_results.json, LOST's released
data/CAD_predictions/LOST_plus_CAD_*.json), a COCO JSON of pseudo-labels (tools/discover.py) or
LOST's pickle of boxes (main_lost.py's preds.pkl, the released data/LOST_predictions/LOST_VOC07.pkl).

Examples:
  tools/corloc.py --pred LOST_plus_CAD_VOC07.json --dataset voc07_trainval     # LOST's README: 65.7
  tools/corloc.py --pred LOST_VOC07.pkl --dataset voc07_trainval               # 61.9
"""
import argparse
import pickle
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, type=Path, help="predictions: COCO results list, COCO JSON or LOST .pkl")
    parser.add_argument("--dataset", required=True, help="registered split with boxes (voc07_trainval, voc12_trainval, coco20k_train, ...)")
    parser.add_argument("--no-hard", action="store_true", help="leave out truncated/difficult VOC objects and the images "
                        "left without any (LOST's VOC_all setup, --no_hard)")
    args = parser.parse_args(argv)

    import cad  # noqa: F401  (registers the predefined splits)
    from detectron2.data import DatasetCatalog

    from cad.data.paths import DatasetMissingError
    from cad.evaluation.corloc import corloc_hits, dataset_gt_boxes
    from cad.evaluation.prediction_files import load_prediction_boxes

    try:
        if args.dataset not in DatasetCatalog.list():
            raise ValueError(f"dataset '{args.dataset}' is not registered")
        if not args.pred.is_file():
            raise ValueError(f"--pred '{args.pred}' does not exist")
        boxes, scores = load_prediction_boxes(args.pred, DatasetCatalog.get(args.dataset))
        hits = corloc_hits(boxes, dataset_gt_boxes(args.dataset, args.no_hard), scores)
    except (ValueError, KeyError, OSError, DatasetMissingError, pickle.UnpicklingError, EOFError) as e:
        print(f"error: {e}" if not isinstance(e, KeyError) else f"error: missing key {e} in --pred", file=sys.stderr)
        return 2
    found = sum(hits.values())
    print(f"corloc: {100 * found / len(hits):.2f} ({found}/{len(hits)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
