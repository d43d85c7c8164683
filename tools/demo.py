#!/usr/bin/env python
"""Run a cad model on your own images: one PNG per image (Detectron2 Visualizer) and one COCO JSON.

examples:
  tools/demo.py --config-file configs/CutLER/cascade_mask_rcnn_R_50_FPN_maskcut_cutler.yaml \\
      --input photos/*.jpg --output demo_out --opts MODEL.WEIGHTS cutler_cascade_final.pth
  tools/demo.py --config-file configs/LOST/lost_dino_vits16_voc07.yaml --input photos/ --output lost_out \\
      --opts MODEL.WEIGHTS dino_deitsmall16_pretrain.pth
  tools/demo.py --config-file configs/DIOD/diod_synthetic.yaml --input frames/ --output strips \\
      --opts MODEL.WEIGHTS output/diod_synthetic/model_final.pth

Every token after --input is an input (as in Detectron2's demo): a file of any name, a folder (every
image file under it, recursively, sorted by path, ids 1..N, as images:DIR and tools/discover.py) or
a quoted glob pattern. Config overrides go after --opts (KEY VALUE ...), last. The JSON
(OUTPUT/demo_results.json) is read by tools/self_training_ann.py --detectron2-out-dir OUTPUT.
DIOD configs take folders of frames (one video per folder) and write one slot-mask strip per clip
of CAD.MOTION.CLIP_LENGTH frames. Unreadable images are skipped and counted.
"""
import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", required=True, help="FILES | DIR | 'GLOB' (every token is an input)")
    p.add_argument("--output", required=True, help="output folder (PNGs and demo_results.json)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score drawn and written")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides, last")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args, rest = p.parse_known_args(argv)

    import cad  # noqa: F401  (registers models and splits)
    from cad.engine.demo import run_demo
    from cad.engine.setup import build_cfg, check_weights, default_cfg, is_config_key
    from cad.errors import UserError, report

    if rest:
        hint = f"; config overrides go after --opts (--opts {rest[0]} VALUE ...)" if is_config_key(default_cfg(), rest[0]) else ""
        p.error(f"unrecognized arguments: {' '.join(rest)}{hint}")

    try:
        cfg = build_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts, train_dataset="", test_dataset=""))
        check_weights(cfg.MODEL.WEIGHTS)
        summary = run_demo(cfg, args.input, args.output, args.confidence_threshold)
    except UserError as e:
        return report(e)
    written = f"wrote {len(summary.pngs)} PNGs" + (f" and {summary.results}" if summary.results else "")
    print(f"{written} to {args.output}; {len(summary.skipped)} unreadable inputs skipped"
          + (f": {', '.join(summary.skipped)}" if summary.skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
