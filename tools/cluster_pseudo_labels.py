#!/usr/bin/env python
"""Cluster the objects of a pseudo-label COCO JSON (LOST boxes, MaskCut/VoteCut masks) into K
pseudo-classes with LOST+OD's recipe (valeoai/LOST cluster_for_OD.py): DINO ViT-S/16 CLS feature
of each crop (shorter side 256), whitened, L2-normalised, k-means (k = 20, seed 123).

The output is the same JSON with `category_id` = cluster (1..K) and K `categories`, ready to train
a class-aware detector (configs/LOST/faster_rcnn_R_50_C4_lost_od_voc07.yaml).

Examples:
  tools/cluster_pseudo_labels.py --pseudo-labels LOST_VOC07.pkl --dataset voc07_trainval \\
      --out $DETECTRON2_DATASETS/pseudo_labels/lost_od_voc07_trainval.json       # LOST's released boxes
  tools/cluster_pseudo_labels.py --pseudo-labels $DETECTRON2_DATASETS/pseudo_labels/lost_voc07_trainval.json \\
      --out $DETECTRON2_DATASETS/pseudo_labels/lost_od_voc07_trainval.json --features-cache lost_voc07_feats.npz
"""
import argparse
import logging
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pseudo-labels", required=True, type=Path,
                        help="COCO JSON of boxes or masks (tools/discover.py output), or LOST's .pkl of boxes with --dataset")
    parser.add_argument("--dataset", help="the registered split a LOST .pkl was made on (e.g. voc07_trainval)")
    parser.add_argument("--out", required=True, type=Path, help="clustered COCO JSON")
    parser.add_argument("--image-root", type=Path, help="folder the JSON's file_name values are relative to (default: as written)")
    parser.add_argument("--k", type=int, default=20, help="number of clusters (default 20, the official --nb_clusters)")
    parser.add_argument("--seed", type=int, default=123, help="k-means seed (default 123, the official --random_seed)")
    parser.add_argument("--no-whiten", action="store_true", help="cluster the L2-normalised features without scipy's whiten")
    parser.add_argument("--arch", default="dino_vits16", help="ViT of the crop features (default dino_vits16)")
    parser.add_argument("--weights", help="checkpoint of --arch in the official layout (default: the official file)")
    parser.add_argument("--crop-size", type=int, default=256, help="shorter side of the resized crops (default 256)")
    parser.add_argument("--antialias", action="store_true", help="antialiased resize (torchvision >= 0.17's default; LOST ran without)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--features-cache", type=Path, help=".npz of the crop features, reused for another --k/--seed")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(levelname)s %(message)s")

    import pickle

    import torch

    import cad  # noqa: F401  (registers the predefined splits)
    from cad.backbones.vit import build_vit
    from cad.checkpoint.errors import CheckpointError, WeightsNotFoundError
    from cad.discovery.cluster import ClusterSettings, cluster_pseudo_labels, coco_from_lost_pickle
    from cad.utils.io import InputFileError, atomic_write_json, read_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = ClusterSettings(args.k, args.seed, not args.no_whiten, args.arch, args.crop_size, args.antialias)
    try:
        if args.k < 1 or args.crop_size < 1:
            raise ValueError("--k and --crop-size must be >= 1")
        if args.pseudo_labels.suffix == ".pkl":
            if not args.dataset:
                raise ValueError("a LOST .pkl of boxes needs --dataset (the split it was made on)")
            coco = coco_from_lost_pickle(args.pseudo_labels, args.dataset)
        else:
            coco = read_json(args.pseudo_labels, "--pseudo-labels")
        if not isinstance(coco, dict) or not {"images", "annotations"} <= set(coco):
            raise ValueError(f"--pseudo-labels '{args.pseudo_labels}' is not a COCO JSON with 'images' and 'annotations'")
        clustered, report = cluster_pseudo_labels(
            coco, lambda: build_vit(args.arch, args.weights, device=device), settings, args.weights,
            args.image_root, device, args.features_cache,
        )
    except (InputFileError, WeightsNotFoundError, CheckpointError, ValueError, OSError,
            pickle.UnpicklingError, EOFError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_json(args.out, clustered)
    print(f"wrote {args.out}: {report.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
