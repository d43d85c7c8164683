#!/usr/bin/env python
"""Run a cad model on your own images: one PNG per image (Detectron2 Visualizer) and one COCO JSON.

examples:
  tools/demo.py --config-file configs/CutLER/cascade_mask_rcnn_R_50_FPN_maskcut_cutler.yaml \\
      --input photos/*.jpg --output demo_out MODEL.WEIGHTS cutler_cascade_final.pth
  tools/demo.py --config-file configs/LOST/lost_dino_vits16_voc07.yaml --input photos/ --output lost_out \\
      MODEL.WEIGHTS dino_deitsmall16_pretrain.pth
  tools/demo.py --config-file configs/DIOD/diod_synthetic.yaml --input frames/ --output strips \\
      MODEL.WEIGHTS output/diod_synthetic/model_final.pth

--input takes files, glob patterns (quoted) and folders (their image files, sorted). KEY VALUE
config overrides go last (right after the inputs, the first upper-case dotted KEY ends them;
`--opts KEY VALUE ...` also works, as in Detectron2's demo). DIOD configs take a folder of frames and write one slot-mask
strip per clip of CAD.MOTION.CLIP_LENGTH frames. Unreadable images are skipped and counted.
"""
import argparse
import re
import sys
from typing import List, Tuple

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_inputs(tokens: List[str]) -> Tuple[List[str], List[str]]:
    """(inputs, overrides): the overrides start at the first token that is a config KEY."""
    for i, token in enumerate(tokens):
        if _KEY.match(token):
            return tokens[:i], tokens[i:]
    return tokens, []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="FILES | 'GLOB' | DIR, then optional KEY VALUE overrides")
    p.add_argument("--output", required=True, help="output folder (PNGs and demo_results.json)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score drawn and written")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    args, rest = p.parse_known_args()
    if any(token.startswith("--") for token in rest):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    inputs, overrides = split_inputs(args.input)
    overrides += rest  # KEY VALUE pairs after the other options

    import cad  # noqa: F401  (registers models and splits)
    from cad.engine.demo import run_demo
    from cad.engine.setup import build_cfg, check_weights
    from cad.errors import UserError, report

    try:
        cfg = build_cfg(argparse.Namespace(config_file=args.config_file, opts=overrides + list(args.opts),
                                           train_dataset="", test_dataset=""))
        check_weights(cfg.MODEL.WEIGHTS)
        summary = run_demo(cfg, inputs, args.output, args.confidence_threshold)
    except UserError as e:
        return report(e)
    written = f"wrote {len(summary.pngs)} PNGs" + (f" and {summary.results}" if summary.results else "")
    print(f"{written} to {args.output}; {len(summary.skipped)} unreadable inputs skipped"
          + (f": {', '.join(summary.skipped)}" if summary.skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
