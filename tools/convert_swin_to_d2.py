#!/usr/bin/env python
"""Convert a released ImageNet Swin file (e.g. swin_tiny_patch4_window7_224.pth) to the Detectron2
.pkl that the Mask2Former / Guided Distillation Swin configs name in MODEL.WEIGHTS (the same file
as the official tools/convert-pretrained-swin-model-to-d2.py)."""
import sys

from cad.backbones.swin import SWIN_FILES, SWIN_RELEASE, convert_swin_checkpoint
from cad.checkpoint.convert import converter_main


def main() -> int:
    return converter_main(
        convert_swin_checkpoint, __doc__,
        src_help="released Swin .pth (a path or a URL), e.g. swin_tiny_patch4_window7_224.pth",
        dst_help="output Detectron2 .pkl, e.g. swin_tiny_patch4_window7_224.pkl",
        epilog="The files of the official configs: " + " ".join(f"{SWIN_RELEASE}/{f}" for f in SWIN_FILES),
    )


if __name__ == "__main__":
    sys.exit(main())
