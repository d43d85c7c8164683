"""Batches formed and copy-pasted in the DataLoader workers (cad.data.worker_batches).

Pinned: the batches hold the images Detectron2's aspect-ratio-grouped loader puts together; the
same seed gives the same pasted batches with 0 and 2 workers; every draw is a function of
(seed, rank, batch position); the training process's global generators are left untouched; a
loader resumed from its `state_dict` yields the batches the uninterrupted one would, and one
resumed with another layout says so.
"""
import argparse
import itertools
import random

import numpy as np
import torch
from detectron2.data import build_detection_train_loader
from detectron2.data import detection_utils as utils
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.utils.env import seed_all_rng
from PIL import Image

from cad.data.mapper import CadDatasetMapper
from cad.data.worker_batches import (BatchLoader, BatchMapDataset, GroupedBatchSampler, aspect_groups, image_size,
                                     seeded_global_rngs)
from cad.engine.copy_paste_trainer import CopyPasteTrainer
from cad.engine.setup import build_cfg
from conftest import REPO, TINY_OPTS

CASCADE = REPO / "configs/CuVLER/cascade_mask_rcnn_R_18_FPN_synthetic.yaml"


def test_grouped_batches_are_detectron2s():
    rng = np.random.default_rng(0)
    dicts = [{"id": i, "width": int(w), "height": int(h)} for i, (w, h) in enumerate(rng.integers(10, 20, (40, 2)))]
    stream = [int(i) for i in rng.integers(0, 40, 200)]
    groups = aspect_groups(dicts)
    ours = [(k, b) for k, b in GroupedBatchSampler(stream, 3, groups)]
    theirs = [[d["id"] for d in b] for b in AspectRatioGroupedDataset([dicts[i] for i in stream], 3)]
    assert [b for _, b in ours] == theirs and [k for k, _ in ours] == list(range(len(theirs)))
    assert {len(set(groups[b])) for _, b in ours} == {1} and len(theirs) >= 60
    plain = [b for _, b in GroupedBatchSampler(stream, 3)]
    assert plain == [stream[i: i + 3] for i in range(0, 198, 3)]


def test_images_without_size_are_grouped_by_their_rotated_header(tmp_path):
    """Detectron2 reads sizes when mapping (EXIF rotation applied); the sampler reads the header."""
    plain, rotated = tmp_path / "plain.jpg", tmp_path / "rotated.jpg"
    Image.new("RGB", (30, 20)).save(plain)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees: displayed 20 wide, 30 high
    Image.new("RGB", (30, 20)).save(rotated, exif=exif)
    dicts = [{"file_name": str(plain)}, {"file_name": str(rotated)}, {"width": 5, "height": 9}]
    assert aspect_groups(dicts).tolist() == [0, 1, 1]
    assert image_size(dicts[1]) == (20, 30) == utils.read_image(str(rotated)).shape[1::-1]


def test_global_generators_are_seeded_then_restored():
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    expected = random.random(), np.random.rand(), torch.rand(()).item()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    with seeded_global_rngs(7):
        inside = random.random(), np.random.rand(), torch.rand(()).item()
    with seeded_global_rngs(7):
        assert (random.random(), np.random.rand(), torch.rand(()).item()) == inside
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_batch_draws_depend_on_seed_rank_and_position_only():
    dicts = [{"i": i, "width": 2, "height": 1} for i in range(50)]

    def mapper(d):  # None (unreadable) for odd indices; the augmentation draws from NumPy's global generator
        return None if d["i"] % 2 else {"i": d["i"], "aug": float(np.random.rand())}

    def transform(batch, rng):
        return [{**d, "paste": float(rng.random())} for d in batch]

    def items(seed, rank, position, indices=(0, 2, 3)):
        return BatchMapDataset(dicts, mapper, seed, rank, aspect_groups(dicts), transform)[(position, list(indices))]

    first = items(0, 0, 4)
    assert first == items(0, 0, 4)
    assert first[2]["i"] % 2 == 0 and first[:2] == items(0, 0, 4, (0, 2))  # 3 was replaced by an even index
    for other in (items(1, 0, 4), items(0, 1, 4), items(0, 0, 5)):
        assert [d["aug"] for d in other] != [d["aug"] for d in first]
        assert [d["paste"] for d in other] != [d["paste"] for d in first]


def _loader(workers: int, seed: int):
    opts = TINY_OPTS + ["DATASETS.TRAIN", "('synthetic_shapes_tiny_train_pseudo',)", "DATALOADER.NUM_WORKERS", str(workers),
                        "SEED", str(seed), "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
                        "INPUT.RANDOM_FLIP", "horizontal"]
    cfg = build_cfg(argparse.Namespace(config_file=str(CASCADE), opts=opts))
    seed_all_rng(seed)  # as train_net's setup: the TrainingSampler's shuffle seed
    return cfg, CopyPasteTrainer.build_step_loader(cfg)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_same_seed_same_pasted_batches_with_0_and_2_workers():
    _, loader = _loader(0, seed=3)
    zero = _take(loader, 4)
    cfg, loader = _loader(2, seed=3)
    two = _take(loader, 4)
    for a, b in zip(zero, two):
        assert [d["image_id"] for d in a] == [d["image_id"] for d in b]
        for da, db in zip(a, b):
            assert torch.equal(da["image"], db["image"])
            assert torch.equal(da["instances"].gt_masks.tensor, db["instances"].gt_masks.tensor)
            assert torch.equal(da["instances"].gt_scores, db["instances"].gt_scores)
    # the same images as Detectron2's loader (same sampler seed, aspect-ratio grouping), now pasted:
    seed_all_rng(3)
    stock = _take(build_detection_train_loader(cfg, mapper=CadDatasetMapper(cfg, True)), 4)
    assert [[d["image_id"] for d in b] for b in stock] == [[d["image_id"] for d in b] for b in zero]
    assert sum(len(d["instances"]) for b in zero for d in b) > sum(len(d["instances"]) for b in stock for d in b)
    _, loader = _loader(0, seed=4)
    other = _take(loader, 4)
    assert any(not torch.equal(a[0]["image"], b[0]["image"]) for a, b in zip(zero, other))


def _ids_loader(seed: int, rank: int = 0, world: int = 1, batch: int = 3, images: int = 40):
    """A BatchLoader over `images` dicts of two aspect groups; the mapper records the index and one draw."""
    dicts = [{"i": i, "width": 1 + i % 2, "height": 1} for i in range(images)]
    groups = aspect_groups(dicts)
    dataset = BatchMapDataset(dicts, lambda d: {"i": d["i"], "aug": float(np.random.rand())}, 0, rank, groups)
    return BatchLoader(dataset, TrainingSampler(len(dicts), seed=seed), batch, groups, 0, rank, world)


def test_loader_resumed_from_its_state_yields_the_uninterrupted_batches():
    straight = _take(_ids_loader(seed=5), 9)
    first = _ids_loader(seed=5)
    _take(first, 6)
    state = first.state_dict()
    assert state["batches"] == 6 and state["sampler"] == {"_seed": 5}
    resumed = _ids_loader(seed=99)  # a new process draws another sampler seed: the state's replaces it
    stream = iter(resumed)  # as Detectron2's trainers do, before the checkpoint is loaded
    assert resumed.load_state_dict(state) is None
    assert [next(stream) for _ in range(3)] == straight[6:]
    restarted = _take(_ids_loader(seed=5), 3)  # the loader without the state: not the continuation
    assert [[d["i"] for d in b] for b in restarted] != [[d["i"] for d in b] for b in straight[6:]]


def test_loader_resumed_with_another_layout_says_what_differs():
    first = _ids_loader(seed=5)
    _take(first, 4)
    two = _ids_loader(seed=1, rank=1, world=2, batch=2)
    note = two.load_state_dict(first.state_dict())
    assert note == ("1 process(es) x 3 images per batch then, 2 x 2 now: the stream goes on after its first 12 images, "
                    "in new batches")
    # rank 1 of 2 continues at the 13th index of the sampler's stream (its odd positions from there),
    # the first batch being the first pair of one aspect group (the index's parity here)
    buckets = {0: [], 1: []}
    for i in itertools.islice(TrainingSampler(40, seed=5)._infinite_indices(), 13, None, 2):
        buckets[i % 2].append(i)
        if len(buckets[i % 2]) == 2:
            break
    assert [d["i"] for d in _take(two, 1)[0]] == buckets[i % 2]
    assert _ids_loader(seed=1, images=30).load_state_dict(first.state_dict()) == "40 dataset images then, 30 now: another index stream"
