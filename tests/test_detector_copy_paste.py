"""Copy-paste on mapped batches: masks, boxes, scores and pixels stay consistent."""
import numpy as np
import torch
from detectron2.structures import BitMasks, Instances

from cad.data.copy_paste import CopyPaste, CopyPasteParams, copy_paste_batch, mask_boxes, paste_objects

torch.set_num_threads(1)


def _instances(masks, scores):
    masks = torch.as_tensor(np.stack(masks)) if masks else torch.zeros(0, 20, 20, dtype=torch.bool)
    inst = Instances(tuple(masks.shape[1:]) if len(masks) else (20, 20))
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
    inst.gt_classes = torch.zeros(len(masks), dtype=torch.int64)
    inst.gt_scores = torch.tensor(scores, dtype=torch.float32)
    return inst


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_paste_composites_pixels_updates_occluded_masks_and_boxes():
    target_img = torch.zeros(3, 20, 20, dtype=torch.uint8)
    source_img = torch.full((3, 20, 20), 200, dtype=torch.uint8)
    target = _instances([_box(20, 20, 0, 10, 0, 10)], [1.0])
    source = _instances([_box(20, 20, 5, 15, 5, 15), _box(20, 20, 0, 2, 18, 20)], [0.4, 0.9])
    params = CopyPasteParams(torch.tensor([0]), size=(20, 20), offset=(0, 0))
    image, out = paste_objects(target_img, target, source_img, source, params)
    # the pasted square covers 25 of the target's 100 pixels (< 50 %): both survive
    assert len(out) == 2
    assert torch.equal(out.gt_scores, torch.tensor([1.0, 0.4]))
    pasted = _box(20, 20, 5, 15, 5, 15)
    assert torch.equal(out.gt_masks.tensor[1], torch.from_numpy(pasted))
    assert torch.equal(out.gt_masks.tensor[0], torch.from_numpy(_box(20, 20, 0, 10, 0, 10) & ~pasted))
    assert torch.equal(out.gt_boxes.tensor, out.gt_masks.get_bounding_boxes().tensor)
    assert out.gt_boxes.tensor[1].tolist() == [5.0, 5.0, 15.0, 15.0]
    assert (image[:, torch.from_numpy(pasted)] == 200).all() and (image[:, torch.from_numpy(~pasted)] == 0).all()
    assert target_img.sum() == 0 and len(target) == 1  # inputs untouched


def test_paste_scales_and_offsets_and_drops_occluding_objects():
    target_img = torch.zeros(3, 20, 20, dtype=torch.uint8)
    source_img = torch.full((3, 20, 20), 50, dtype=torch.uint8)
    source = _instances([_box(20, 20, 0, 10, 0, 10)], [0.7])
    # half size at offset (y=10, x=4): the 10x10 object becomes 5x5 at rows 10-14, cols 4-8
    empty = _instances([], [])
    _, out = paste_objects(target_img, empty, source_img, source, CopyPasteParams(torch.tensor([0]), (10, 10), (10, 4)))
    assert out.gt_boxes.tensor.tolist() == [[4.0, 10.0, 9.0, 15.0]]  # x/y not swapped
    assert out.gt_masks.tensor.sum() == 25
    # a paste covering >= 50 % of an existing object is dropped: nothing changes
    target = _instances([_box(20, 20, 0, 6, 0, 6)], [1.0])
    image, same = paste_objects(target_img, target, source_img, source, CopyPasteParams(torch.tensor([0]), (20, 20), (0, 0)))
    assert same is target and image is target_img


def test_batch_copy_paste_keeps_masks_boxes_scores_consistent():
    rng = np.random.default_rng(0)
    batch = []
    for i in range(3):
        img = torch.from_numpy(rng.integers(0, 255, (3, 32, 40), dtype=np.uint8))
        masks = [_box(32, 40, *sorted(rng.integers(0, 32, 2) + [0, 4]), *sorted(rng.integers(0, 40, 2) + [0, 4]))
                 for _ in range(i + 1)]
        batch.append({"image": img, "instances": _instances(masks, [0.1 * (i + 1)] * (i + 1)), "file_name": f"{i}"})
    before = [(d["image"].clone(), d["instances"].gt_masks.tensor.clone()) for d in batch]
    for seed in range(5):
        out = copy_paste_batch(batch, np.random.default_rng(seed), min_ratio=0.3, max_ratio=1.0)
        assert [d["file_name"] for d in out] == ["0", "1", "2"]
        for d in out:
            inst = d["instances"]
            m = inst.gt_masks.tensor
            assert m.flatten(1).any(1).all()  # no empty objects
            assert torch.equal(inst.gt_boxes.tensor, BitMasks(m).get_bounding_boxes().tensor)
            assert len(inst.gt_scores) == len(inst) and set(inst.gt_scores.tolist()) <= {
                np.float32(0.1 * k) for k in (1, 2, 3)
            }
        # image 0 receives objects only from image 2 (scores 0.3), image 2 only from image 0 (0.1)
        assert set(out[0]["instances"].gt_scores.tolist()) <= {np.float32(0.1), np.float32(0.3)}
        assert set(out[2]["instances"].gt_scores.tolist()) <= {np.float32(0.1), np.float32(0.3)}
    for d, (img, masks) in zip(batch, before):
        assert torch.equal(d["image"], img) and torch.equal(d["instances"].gt_masks.tensor, masks)
    assert all(a is b for a, b in zip(copy_paste_batch(batch, np.random.default_rng(0), rate=0.0), batch))


def test_transform_pastes_every_batch_with_its_rng():
    inst = _instances([_box(20, 20, 2, 12, 2, 12)], [1.0])
    batch = [{"image": torch.zeros(3, 20, 20, dtype=torch.uint8), "instances": inst},
             {"image": torch.full((3, 20, 20), 9, dtype=torch.uint8), "instances": _instances([], [])}]
    transform = CopyPaste(rate=1.0, min_ratio=0.5, max_ratio=0.5, random_num=False)
    out = transform(batch, np.random.default_rng(0))
    assert len(out[1]["instances"]) == 1 and (out[1]["image"] == 0).sum() == 3 * 25  # a 5x5 object, half size
    again = transform(batch, np.random.default_rng(0))
    assert torch.equal(again[1]["image"], out[1]["image"])


def test_mask_boxes_are_detectron2s():
    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((6, 17, 23)) > 0.97)
    masks[2] = False  # empty: zero box
    masks[3] = False
    masks[3, 16, 22] = True  # bottom-right pixel
    assert torch.equal(mask_boxes(masks), BitMasks(masks).get_bounding_boxes().tensor)
    assert mask_boxes(masks)[3].tolist() == [22.0, 16.0, 23.0, 17.0]
    assert mask_boxes(masks[:0]).shape == (0, 4)
