#!/usr/bin/env python
"""Pseudo-labels without supervision: `tools/discover.py {lost,maskcut,votecut} --images DIR --out F.json`.

Run `tools/discover.py --help` for the options (sharding, workers, resumable stages, SLURM arrays).
"""
import sys

from cad.discovery.cli import run

if __name__ == "__main__":
    sys.exit(run())
