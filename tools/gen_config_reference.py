#!/usr/bin/env python
"""Write docs/config_reference.md: every key cad adds to Detectron2's config, its default and the
comment above it in cad/config.py (tests/test_config_reference.py fails when the page is stale).

example:
  tools/gen_config_reference.py                 # writes docs/config_reference.md
  tools/gen_config_reference.py --out /tmp/config_reference.md
"""
import argparse
import sys
from pathlib import Path

from cad.utils.config_reference import PAGE, ConfigReferenceError, render_config_reference
from cad.utils.io import atomic_write_bytes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / PAGE, help=f"default: {PAGE}")
    args = parser.parse_args(argv)
    try:
        text = render_config_reference()
    except ConfigReferenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    atomic_write_bytes(args.out, text.encode("utf-8"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
