#!/usr/bin/env python
"""Generate cad's synthetic splits (deterministic) under a dataset root.

Examples:
  tools/make_synthetic.py                       # every synthetic_* split under $DETECTRON2_DATASETS
  tools/make_synthetic.py --root /data --splits synthetic_shapes_val
"""
import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--splits", nargs="*", default=None, help="split names (default: all synthetic_* splits)")
    args = parser.parse_args()
    if args.root:
        os.environ["DETECTRON2_DATASETS"] = args.root  # before cad registers its splits
    from detectron2.data import DatasetCatalog

    import cad  # noqa: F401  (registers the splits)
    from cad.data.paths import datasets_root
    from cad.engine.setup import check_output_dir
    from cad.errors import UserError, report

    try:
        check_output_dir(str(datasets_root()), "--root" if args.root else "$DETECTRON2_DATASETS")
    except UserError as e:
        return report(e)

    names = args.splits or sorted(n for n in DatasetCatalog.list() if n.startswith("synthetic_"))
    unknown = [n for n in names if n not in DatasetCatalog.list()]
    if unknown:
        print(f"error: unknown split(s) {unknown}", file=sys.stderr)
        return 2
    for name in names:
        records = DatasetCatalog.get(name)
        print(f"{name}: {len(records)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
