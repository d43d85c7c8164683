#!/usr/bin/env python
"""Train or evaluate any cad model from a config (Detectron2-style command line).

Run `tools/train_net.py --help` for the options; trailing KEY VALUE pairs override the config.
"""
import sys

from cad.engine.cli import run

if __name__ == "__main__":
    sys.exit(run())
