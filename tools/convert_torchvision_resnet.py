#!/usr/bin/env python
"""Convert a torchvision-layout ResNet checkpoint (e.g. DINO's dino_resnet50_pretrain.pth, a path
or a URL) to a Detectron2 .pkl for MODEL.WEIGHTS (the LOST+CAD configs expect
weights/dino_resnet50_d2.pkl). MODEL.WEIGHTS also takes the torchvision file itself."""
import sys

from cad.checkpoint.convert import convert_torchvision_checkpoint, converter_main


def main() -> int:
    return converter_main(convert_torchvision_checkpoint, __doc__,
                          src_help="torchvision ResNet .pth (a path or an http(s):// URL)", dst_help="output Detectron2 .pkl")


if __name__ == "__main__":
    sys.exit(main())
