"""Detectron2's `CityscapesInstanceEvaluator`, usable with the NumPy cad installs.

Two fixes to cityscapesscripts 2.3.0 (the latest release), applied to its instance evaluation
module only (NumPy and every other module are left alone):

- it calls `np.in1d`, which NumPy 2.4 removed (mcordts/cityscapesScripts pull request #196, open):
  the module gets a NumPy namespace with `in1d` defined as NumPy documents the replacement,
  `np.isin(...).ravel()`;
- its JSON dumps (`writeDict2JSON`) cannot serialise the NumPy integers NumPy 2 returns from
  counts, and it dumps `matches.json` into the current folder: NumPy scalars are written as
  numbers, and a relative file name goes into the evaluator's temporary prediction folder
  (`args.predictionPath`, which Detectron2 sets and deletes).
"""
import json
import os
import types

import numpy as np
from detectron2.evaluation import CityscapesInstanceEvaluator


def _in1d(ar1, ar2, assume_unique: bool = False, invert: bool = False) -> np.ndarray:
    return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


def _json_default(obj):
    return obj.item() if isinstance(obj, np.generic) else obj.__dict__


def patch_cityscapesscripts() -> None:
    """Apply the two fixes above to cityscapesscripts' instance evaluation module (idempotent)."""
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cityscapes_eval

    def write_json(data, file_name: str) -> None:
        if not os.path.isabs(file_name):
            file_name = os.path.join(cityscapes_eval.args.predictionPath, file_name)
        with open(file_name, "w") as f:
            json.dump(data, f, default=_json_default, sort_keys=True, indent=4)

    if not hasattr(cityscapes_eval.np, "in1d"):
        numpy_ns = types.ModuleType("numpy")
        numpy_ns.__dict__.update(np.__dict__)
        numpy_ns.in1d = _in1d
        cityscapes_eval.np = numpy_ns
    cityscapes_eval.writeDict2JSON = write_json


def instance_evaluator(dataset_name: str) -> CityscapesInstanceEvaluator:
    patch_cityscapesscripts()
    return CityscapesInstanceEvaluator(dataset_name)
