"""Official files written once in Detectron2's format (tools/convert_torchvision_resnet.py,
tools/convert_swin_to_d2.py).

cad reads the official layouts in memory, so no conversion is needed to use them; this writes a
torchvision ResNet (e.g. DINO's `dino_resnet50_pretrain.pth`) as the Detectron2 `.pkl` that
Detectron2 itself and other tools load as a backbone initialisation (its torchvision conversion
script's format).
"""
import argparse
import pickle
import sys
from pathlib import Path
from typing import Callable, Optional, Union

from cad.checkpoint.loader import read_layout
from cad.errors import UserError, report
from cad.utils.io import atomic_write_bytes

__all__ = ["convert_torchvision_checkpoint", "converter_main"]


def convert_torchvision_checkpoint(src: Union[str, Path], dst: Union[str, Path]) -> int:
    """Write the torchvision ResNet file `src` (a path or a URL) as a Detectron2 `.pkl` at `dst`
    (numpy arrays, `matching_heuristics`), atomically; returns the number of tensors. Raises
    `CheckpointError` (one line) for a source that is not a torchvision ResNet file."""
    _, state = read_layout(str(src), "torchvision_resnet", option="torchvision ResNet")
    converted = {k: v.detach().cpu().numpy() for k, v in state.items()}
    payload = {"model": converted, "__author__": "torchvision", "matching_heuristics": True}
    atomic_write_bytes(Path(dst), pickle.dumps(payload))
    return len(converted)


def converter_main(convert: Callable[[str, str], int], description: str, src_help: str, dst_help: str,
                   epilog: Optional[str] = None) -> int:
    """The command line of a converter tool: `SRC DST` -> `convert(SRC, DST)` (returns the number of
    tensors written), "wrote N tensors to DST" on stdout; a user error is one `error:` line on stderr.
    Returns the exit status (0, or 2 for a user error)."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog)
    parser.add_argument("src", help=src_help)
    parser.add_argument("dst", help=dst_help)
    args = parser.parse_args()
    try:
        count = convert(args.src, args.dst)
    except UserError as e:
        return report(e)
    sys.stdout.write(f"wrote {count} tensors to {args.dst}\n")
    return 0
