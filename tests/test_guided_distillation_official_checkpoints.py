"""Official Guided Distillation / Mask2Former checkpoints load strictly into cad and predict as
the same weights loaded natively.

The key lists (tests/fixtures/guided_distillation/*.txt) are the official MaskFormer's state-dict
keys and shapes for a tiny head (R50, and the DINOv2 ViT-B/14 backbone at depth 1). Each test
builds random tensors of those shapes, writes them in an official file layout as Detectron2's
checkpointer does (`torch.save({"model": state_dict, ...})`, `_metadata` included), loads the file
through `cad.checkpoint.layouts` and compares the model output with the output of the member's
weights loaded directly (`load_state_dict`, cad's names being the official ones).
"""
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from cad.checkpoint.layouts import find_layout
from cad.checkpoint.loader import CheckpointError, load_checkpoint
from cad.config import add_cad_config
from cad.distillation.guided import load_teacher

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "guided_distillation"
KEYS = {"r50": FIXTURES / "maskformer_r50_tiny_keys.txt", "dinov2": FIXTURES / "maskformer_dinov2_vitb14_depth1_keys.txt"}
CONFIGS = {
    "r50": REPO / "configs/GuidedDistillation/coco/r50_student_1pct.yaml",
    "dinov2": REPO / "configs/GuidedDistillation/coco/dinov2_student_1pct.yaml",
}
# The fixture's head (see the fixture header); the pixel decoder's FFN stays at the official 1024.
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32", "MODEL.MASK_FORMER.NHEADS", "4", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "3", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "5", "TEST.DETECTIONS_PER_IMAGE", "15",
    "CAD.VIT.WEIGHTS", "random", "CAD.VIT.DEPTH", "1",
]


def _cfg(variant: str, eval_who: str = "student"):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(CONFIGS[variant]))
    cfg.merge_from_list(TINY + ["SSL.EVAL_WHO", eval_who])
    return cfg


def _official_shapes(variant: str) -> Dict[str, Tuple[int, ...]]:
    shapes = {}
    for line in KEYS[variant].read_text().splitlines():
        if line and not line.startswith("#"):
            key, *dims = line.split()
            shapes[key] = tuple(int(d) for d in dims)
    return shapes


def _member(shapes: Dict[str, Tuple[int, ...]], seed: int) -> Dict[str, torch.Tensor]:
    """Random weights in the official names (positive BN variances, the criteria's constant buffers)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("empty_weight"):
            state[key] = torch.tensor([1.0] * (shape[0] - 1) + [0.1])
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * (0.5 if len(shape) > 1 else 0.3)
    return state


def _d2_state_dict(members: Dict[str, Dict[str, torch.Tensor]]) -> OrderedDict:
    """Each member's tensors under its prefix, with the `_metadata` that `nn.Module.state_dict()`
    (hence Detectron2's checkpointer) records for the official MaskFormer: version 2 for
    `sem_seg_head` and its predictor."""
    out = OrderedDict((prefix + k, v) for prefix, member in members.items() for k, v in member.items())
    out._metadata = OrderedDict()
    for prefix in members:
        out._metadata[prefix + "sem_seg_head"] = {"version": 2}
        out._metadata[prefix + "sem_seg_head.predictor"] = {"version": 2}
    return out


def _plain(member: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An official member as a plain Mask2Former state dict (upstream Mask2Former has no ssl_criterion)."""
    return {k: v for k, v in member.items() if not k.startswith("ssl_criterion.")}


def _outputs(model, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    with torch.no_grad():
        images = ImageList.from_tensors([(image - model.pixel_mean) / model.pixel_std], model.size_divisibility)
        raw = model.sem_seg_head(model.backbone(images.tensor))
        inst = model([{"image": image, "height": 75, "width": 90}])[0]["instances"]
    return {"logits": raw["pred_logits"], "masks": raw["pred_masks"], "scores": inst.scores, "classes": inst.pred_classes}


def _assert_same(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module", params=["r50", "dinov2"])
def setup(request):
    variant = request.param
    shapes = _official_shapes(variant)
    teacher, student = _member(shapes, 1), _member(shapes, 2)
    model = build_model(_cfg(variant)).eval()
    image = (torch.rand(3, 75, 90, generator=torch.Generator().manual_seed(3)) * 255).round()
    native = {}
    for name, member in (("teacher", teacher), ("student", student)):
        model.load_state_dict(_plain(member), strict=True)
        native[name] = _outputs(model, image)
    assert not torch.equal(native["teacher"]["logits"], native["student"]["logits"])
    return variant, shapes, teacher, student, model, image, native


def test_cad_names_and_shapes_are_the_official_ones(setup):
    variant, shapes, _, _, model, _, _ = setup
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: s for k, s in shapes.items() if not k.startswith("ssl_criterion.")}
    # version 2: the official MaskFormerHead renames sem_seg_head.* keys of unversioned state dicts
    assert state._metadata["sem_seg_head"]["version"] == 2 and state._metadata["sem_seg_head.predictor"]["version"] == 2


@pytest.mark.parametrize(
    "layout,eval_who,expected",
    [
        ("guided_distillation_stage1", "student", "teacher"),  # the teacher is the only member
        ("guided_distillation_stage2", "student", "student"),  # official --eval-only default (SSL.EVAL_WHO STUDENT)
        ("guided_distillation_stage2", "teacher", "teacher"),
    ],
)
def test_official_gd_files_load_strictly_and_predict_as_native(setup, tmp_path, layout, eval_who, expected):
    variant, _, teacher, student, model, image, native = setup
    if layout.endswith("stage1"):
        state = _d2_state_dict({"modelTeacher.": teacher})
    else:
        state = _d2_state_dict({"modelTeacher.": teacher, "modelStudent.": student})
    path = tmp_path / "model_best.pth"
    torch.save({"model": state, "iteration": 4999}, path)
    obj = torch.load(path, map_location="cpu")
    found = find_layout(obj)
    assert found is not None and found.name == layout
    load_checkpoint(model, str(path), _cfg(variant, eval_who))
    _assert_same(_outputs(model, image), native[expected])


@pytest.mark.parametrize("metadata", [True, False])
def test_plain_mask2former_file_needs_no_conversion(setup, tmp_path, metadata):
    # Without `_metadata` (e.g. a converted .pkl) the official loader would move the pixel decoder
    # keys to sem_seg_head.pixel_decoder.pixel_decoder.*; cad loads both the same way.
    _, _, _, student, model, image, native = setup
    state = _d2_state_dict({"": _plain(student)}) if metadata else dict(_plain(student))
    path = tmp_path / "model_final.pth"
    torch.save({"model": state}, path)
    obj = torch.load(path, map_location="cpu")
    layout = find_layout(obj)
    assert layout is None or not layout.name.startswith("guided_distillation")
    load_checkpoint(model, str(path))
    _assert_same(_outputs(model, image), native["student"])


def test_teacher_checkpoint_accepts_official_and_plain_files(setup, tmp_path):
    variant, _, teacher, student, model, image, native = setup
    files = {
        "stage1": {"model": _d2_state_dict({"modelTeacher.": teacher})},
        "stage2": {"model": _d2_state_dict({"modelTeacher.": teacher, "modelStudent.": student})},
        "plain": {"model": _d2_state_dict({"": _plain(teacher)})},
    }
    for name, obj in files.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        cfg = _cfg(variant)
        cfg.SSL.TEACHER_CKPT = str(tmp_path / f"{name}.pth")
        load_teacher(model, cfg)
        _assert_same(_outputs(model, image), native["teacher"])


def test_mismatched_files_fail_with_one_line(setup, tmp_path):
    _, _, teacher, _, model, _, _ = setup
    wrong = dict(_plain(teacher))
    wrong["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(81, 32)  # 80 classes
    del wrong["criterion.empty_weight"]
    torch.save({"model": wrong}, tmp_path / "f.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, str(tmp_path / "f.pth"))
    message = str(err.value)
    assert "\n" not in message and "criterion.empty_weight" in message and "class_embed.weight (81, 32) in the file vs (4, 32)" in message
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(model, str(tmp_path / "notes.txt"))
