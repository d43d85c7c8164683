#!/usr/bin/env python
"""Convert a torchvision-layout ResNet checkpoint (e.g. DINO's dino_resnet50_pretrain.pth, a path
or a URL) to a Detectron2 .pkl for MODEL.WEIGHTS (the LOST+CAD configs expect
weights/dino_resnet50_d2.pkl). MODEL.WEIGHTS also takes the torchvision file itself."""
import argparse
import sys

from cad.checkpoint.convert import convert_torchvision_checkpoint
from cad.errors import UserError, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", help="torchvision ResNet .pth (a path or an http(s):// URL)")
    parser.add_argument("dst", help="output Detectron2 .pkl")
    args = parser.parse_args()
    try:
        count = convert_torchvision_checkpoint(args.src, args.dst)
    except UserError as e:
        return report(e)
    print(f"wrote {count} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
