#!/usr/bin/env python
"""LOST's figures as PNGs (valeoai/LOST `main_lost.py --image_path IMG --visualize fms|seed_expansion|pred`):
fms (the seed's similarity map `corr_<name>.png` and the inverse degree map `deg_<name>.png`),
seed_expansion (`LOST_seed_expansion_<name>.png`) and pred (`LOST_<name>.png`).

Example: tools/visualize_lost.py examples/VOC07_000236.jpg --visualize fms seed_expansion --out vis/
"""
import argparse
import logging
import sys
from pathlib import Path

# output file name of each figure, as visualizations.py names them
FILE_NAMES = {"corr": "corr_{}.png", "deg": "deg_{}.png", "seed_expansion": "LOST_seed_expansion_{}.png", "pred": "LOST_{}.png"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path, help="image files or folders (searched recursively)")
    parser.add_argument("--visualize", nargs="+", default=["pred"], choices=["fms", "seed_expansion", "pred"], help="figures (default pred)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--arch", default="dino_vits16", help="ViT (dino_vits16, ...) or CNN (dino_resnet50, resnet50, vgg16)")
    parser.add_argument("--weights", help="weights file of --arch (default: the official file in the torch.hub cache)")
    parser.add_argument("--features", default="k", choices=["k", "q", "v"], help="ViT keys (default), queries or values")
    parser.add_argument("--resnet-dilate", type=int, default=2, choices=[1, 2, 4], help="ResNet dilation (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    from cad.backbones.cnn import resolve_backbone_weights
    from cad.checkpoint.errors import CheckpointError, WeightsNotFoundError
    from cad.config import ConfigError
    from cad.discovery.lost import LOST
    from cad.discovery.lost_vis import lost_visualizations
    from cad.discovery.method import MethodOptions
    from cad.discovery.sources import UNREADABLE_IMAGE_ERRORS, list_image_dir, read_rgb
    from cad.utils.io import atomic_write_png

    try:
        files = []
        for path in args.images:
            files += [Path(r.path) for r in list_image_dir(path)] if path.is_dir() else [path]
        resolve_backbone_weights(args.arch, args.weights)
        method = LOST(MethodOptions(models=((args.arch, args.weights),), device=args.device),
                      features=args.features, resnet_dilate=args.resnet_dilate)
        method.model
    except (ValueError, WeightsNotFoundError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = skipped = 0
    for path in files:
        try:
            image = read_rgb(str(path))
        except UNREADABLE_IMAGE_ERRORS as e:
            print(f"warning: skipping unreadable image {path} ({type(e).__name__})", file=sys.stderr)
            skipped += 1
            continue
        for kind, picture in lost_visualizations(method, image, args.visualize).items():
            atomic_write_png(args.out / FILE_NAMES[kind].format(path.stem), picture)
            written += 1
    print(f"wrote {written} PNGs to {args.out} ({skipped} unreadable images skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
