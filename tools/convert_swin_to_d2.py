#!/usr/bin/env python
"""Convert a released ImageNet Swin file (e.g. swin_tiny_patch4_window7_224.pth) to the Detectron2
.pkl that the Mask2Former / Guided Distillation Swin configs name in MODEL.WEIGHTS (the same file
as the official tools/convert-pretrained-swin-model-to-d2.py)."""
import argparse
import sys

from cad.backbones.swin import SWIN_FILES, SWIN_RELEASE, convert_swin_checkpoint
from cad.errors import UserError, report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog="The files of the official configs: " + " ".join(f"{SWIN_RELEASE}/{f}" for f in SWIN_FILES)
    )
    parser.add_argument("src", help="released Swin .pth (a path or a URL), e.g. swin_tiny_patch4_window7_224.pth")
    parser.add_argument("dst", help="output Detectron2 .pkl, e.g. swin_tiny_patch4_window7_224.pkl")
    args = parser.parse_args()
    try:
        count = convert_swin_checkpoint(args.src, args.dst)
    except UserError as e:
        return report(e)
    print(f"wrote {count} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
