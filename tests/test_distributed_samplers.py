"""The training loaders cad builds (GD labeled + unlabeled, DIOD/xMOD clips, the cascade's
worker-batched copy-paste loader) shard each epoch:
with W processes, every image/clip is drawn exactly once across ranks. Ranks are simulated in
this process (Detectron2's comm patched), the mappers replaced by the identity so only the
sampling is exercised; the real 2-process runs in test_distributed_equivalence.py check the same
per iteration."""
import pytest
from detectron2.data import build as d2_build
from detectron2.data import get_detection_dataset_dicts
from detectron2.utils import comm

import cad.distillation.guided as guided
import cad.distillation.motion as motion
import cad.engine.copy_paste_trainer as copy_paste_trainer
from cad.engine.cli import train_argument_parser
from cad.engine.setup import build_cfg
from conftest import REPO

GD = REPO / "configs/GuidedDistillation/mask2former_tiny_synthetic_student.yaml"
DIOD = REPO / "configs/DIOD/diod_synthetic.yaml"
CASCADE = REPO / "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"


def _cfg(config, *opts):
    args = train_argument_parser().parse_args(["--config-file", str(config), "DATALOADER.NUM_WORKERS", "0", *opts])
    return build_cfg(args)


def _identity(*_args, **_kwargs):
    return lambda d: d


def _labeled(cfg):
    return get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)


def _unlabeled(cfg):
    return get_detection_dataset_dicts(guided.unlabeled_dataset_names(cfg), filter_empty=False)


# name: (loader builder, config, the dataset dicts it samples from)
LOADERS = {
    "gd_labeled": (guided.GuidedDistillationTrainer.build_train_loader, (GD, "SOLVER.IMS_PER_BATCH", "6"), _labeled),
    "gd_unlabeled": (guided.build_unlabeled_loader, (GD, "SSL.IMS_PER_BATCH_UNLABELED", "6"), _unlabeled),
    "motion_clips": (motion.MotionTrainer.build_train_loader,
                     (DIOD, "DATASETS.TRAIN", "('synthetic_motion_tiny_train', 'synthetic_motion_tiny_val')",
                      "SOLVER.IMS_PER_BATCH", "6"), _labeled),
    "cascade_copy_paste": (copy_paste_trainer.CopyPasteTrainer.build_step_loader,
                           (CASCADE, "DATASETS.TRAIN", "('synthetic_shapes_tiny_train_pseudo',)", "SOLVER.IMS_PER_BATCH", "6"),
                           _labeled),
}


def _ids(d):
    return d["image_id"] if "image_id" in d else (d["video"], d["clip_start"])


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(LOADERS))
def test_every_item_once_per_epoch_across_ranks(monkeypatch, name, world):
    for target in (guided, motion, copy_paste_trainer):
        for mapper in ("Mask2FormerInstanceMapper", "WeakStrongMapper", "MotionClipMapper", "CadDatasetMapper"):
            if hasattr(target, mapper):
                monkeypatch.setattr(target, mapper, _identity)
    monkeypatch.setattr(copy_paste_trainer.CopyPaste, "from_config", classmethod(lambda cls, cfg: None))  # no paste on raw dicts
    monkeypatch.setattr(comm, "get_world_size", lambda: world)
    monkeypatch.setattr(d2_build, "get_world_size", lambda: world)
    monkeypatch.setattr(comm, "shared_random_seed", lambda: 1234)  # what all ranks agree on
    build, cfg_args, dataset = LOADERS[name]
    cfg = _cfg(*cfg_args)
    all_ids = [_ids(d) for d in dataset(cfg)]
    assert len(set(all_ids)) == len(all_ids) >= world
    num_items = len(all_ids) // world  # per rank: together one epoch (minus the remainder)
    drawn = []
    for rank in range(world):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        loader = build(cfg)
        items = []
        for batch in loader:
            assert len(batch) == 6 // world, "per-process batch = total / world size"
            items += [_ids(d) for d in batch]
            if len(items) >= num_items:
                break
        drawn.append(items[:num_items])
    everything = [x for items in drawn for x in items]
    assert len(set(everything)) == len(everything), "an item drawn twice within an epoch"
    if len(everything) == len(all_ids):
        assert set(everything) == set(all_ids)
