#!/usr/bin/env python
"""Convert a torchvision-layout ResNet checkpoint (e.g. DINO's dino_resnet50_pretrain.pth) to a
Detectron2 .pkl for MODEL.WEIGHTS (the LOST+CAD configs expect weights/dino_resnet50_d2.pkl)."""
import argparse
import sys

from cad.modeling.torchvision_resnet import convert_torchvision_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", help="torchvision ResNet .pth")
    parser.add_argument("dst", help="output Detectron2 .pkl")
    args = parser.parse_args()
    try:
        count = convert_torchvision_checkpoint(args.src, args.dst)
    except OSError as e:
        print(f"error: cannot read '{args.src}': {e.strerror}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"wrote {count} tensors to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
