#!/usr/bin/env python
"""Turn a detector's --eval-only predictions into a class-agnostic self-training JSON.

examples:
  # CuVLER round on COCO train2017
  tools/self_training_ann.py --detectron2-out-dir output/pred_coco_train \
      --coco-ann-path datasets/coco/annotations/instances_train2017.json \
      --save-path-prefix datasets/coco/annotations/coco_cls_agnostic_instances_train2017 --threshold 0.2
  # a folder predicted with --test-dataset images:DIR; train next on coco:work/self_thresh0.2.json:DIR
  tools/self_training_ann.py --detectron2-out-dir output/pred_dir --images DIR --save-path-prefix work/self --threshold 0.2
  # tools/demo.py's output (demo_results.json carries its images); run the demo with --confidence-threshold <= 0.2
  tools/self_training_ann.py --detectron2-out-dir demo_out --save-path-prefix work/self --threshold 0.2
"""
import argparse
import logging
import sys

from cad.data.self_training import write_self_training_json
from cad.errors import UserError, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectron2-out-dir", required=True,
                        help="OUTPUT_DIR of train_net.py --eval-only (or its inference/<split> folder, or the results "
                             "JSON), or the --output folder of tools/demo.py")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--coco-ann-path", help="COCO JSON of the predicted split (images, sizes); not needed for the demo's JSON")
    split.add_argument("--images", help="image folder of a split predicted as images:DIR (image entries read from it)")
    parser.add_argument("--save-path-prefix", required=True, help="output is <prefix>_thresh<T>.json")
    parser.add_argument("--threshold", type=float, default=0.2, help="minimum prediction score (CuVLER 0.2, CutLER 0.7/0.65)")
    parser.add_argument("--keep-previous", action="store_true",
                        help="CutLER: also keep --coco-ann-path's masks with IoU < 0.5 with every kept prediction")
    parser.add_argument("--min-box-size", type=float, default=1.0, help="drop boxes narrower/lower than this (pixels)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = write_self_training_json(
            args.detectron2_out_dir, args.coco_ann_path, args.save_path_prefix, args.threshold,
            args.keep_previous, args.min_box_size, args.images,
        )
    except UserError as e:
        return report(e)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
