"""The generated pseudo-label split used by the detector demo."""
import json

import numpy as np
from detectron2.data import DatasetCatalog

from cad.data.synthetic_pseudo import degrade_masks, pseudo_json_path


def test_tiny_pseudo_split_is_deterministic_and_scored(datasets_root):
    dicts = DatasetCatalog.get("synthetic_shapes_tiny_train_pseudo")
    gt = DatasetCatalog.get("synthetic_shapes_tiny_train")
    assert [d["file_name"] for d in dicts] == [d["file_name"] for d in gt]
    for d in dicts:
        scores = [a["score"] for a in d["annotations"]]
        if scores:
            assert max(scores) == 1.0 and min(scores) > 0
    path = pseudo_json_path("synthetic_shapes_tiny_train", datasets_root)
    first = json.loads(path.read_text())
    path.unlink()
    DatasetCatalog.get("synthetic_shapes_tiny_train_pseudo")
    assert json.loads(path.read_text()) == first


def test_degradation_drops_adds_and_scores_by_quality():
    gt = np.zeros((64, 64), bool)
    gt[10:40, 10:40] = True
    counts, best_scores = [], []
    for seed in range(40):
        out = degrade_masks([gt, np.roll(gt, 20, axis=0)], (64, 64), np.random.default_rng(seed))
        counts.append(len(out))
        best_scores.append(max(s for _, s in out) if out else 1.0)
    assert min(counts) < 2 < max(counts)  # objects are missed and spurious blobs appear
    assert all(s == 1.0 for s in best_scores)  # normalised per image like VoteCut
