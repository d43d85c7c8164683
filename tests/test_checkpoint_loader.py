"""cad.checkpoint.loader: the one loading path (layouts, strict full-model loading, backbone-only
initialisation, files that are not checkpoints) and its use by tools/train_net.py."""
import argparse
import io
import json
import logging
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
import torchvision

from cad.backbones.vit import save_random_checkpoint
from cad.checkpoint.loader import CadCheckpointer, CheckpointError, load_checkpoint
from cad.engine.predict import build_loaded_model
from cad.engine.setup import ConfigError, build_cfg
from cad.engine.trainer import TRAINER_REGISTRY
from cad.checkpoint.convert import convert_torchvision_checkpoint

from conftest import REPO, TINY_CONFIG, TINY_OPTS, run_tool

CUTLER_CASCADE = REPO / "configs" / "CutLER" / "cascade_mask_rcnn_R_50_FPN_maskcut_cutler.yaml"
TINY_M2F = REPO / "configs" / "GuidedDistillation" / "mask2former_tiny_synthetic_teacher.yaml"

# Names and shapes of CutLER's released cascade (cutler_cascade_final.pth, {"model": ...}), from its
# config (CutLER-ImageNet/cascade_mask_rcnn_R_50_FPN.yaml: R50-FPN, SyncBN, CustomCascadeROIHeads,
# NUM_CLASSES 1, CLS_AGNOSTIC_BBOX_REG) and Detectron2's module names (its ROI heads only override
# losses, not modules).
CUTLER_KEYS = {
    "backbone.bottom_up.stem.conv1.weight": (64, 3, 7, 7),
    "backbone.bottom_up.stem.conv1.norm.running_var": (64,),
    "backbone.bottom_up.res2.0.shortcut.weight": (256, 64, 1, 1),
    "backbone.bottom_up.res5.2.conv3.weight": (2048, 512, 1, 1),
    "backbone.fpn_lateral2.weight": (256, 256, 1, 1),
    "backbone.fpn_output5.norm.weight": (256,),
    "proposal_generator.rpn_head.conv.weight": (256, 256, 3, 3),
    "proposal_generator.rpn_head.objectness_logits.weight": (3, 256, 1, 1),
    "proposal_generator.rpn_head.anchor_deltas.weight": (12, 256, 1, 1),
    "roi_heads.box_head.0.fc1.weight": (1024, 12544),
    "roi_heads.box_head.2.fc2.bias": (1024,),
    "roi_heads.box_predictor.0.cls_score.weight": (2, 1024),
    "roi_heads.box_predictor.2.bbox_pred.weight": (4, 1024),
    "roi_heads.mask_head.mask_fcn4.weight": (256, 256, 3, 3),
    "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2),
    "roi_heads.mask_head.predictor.weight": (1, 256, 1, 1),
}


def _cfg(config, *opts):
    args = argparse.Namespace(config_file=str(config), opts=[*TINY_OPTS, "MODEL.DEVICE", "cpu", *opts],
                              train_dataset="", test_dataset="")
    return build_cfg(args)


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return TRAINER_REGISTRY.get(cfg.CAD.TRAINER).build_model(cfg).eval()


def _randomize(model, seed):
    """Non-trivial values in every float tensor (BN statistics included), reproducible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.1 + (0.5 if t.dim() == 1 else 0.0))
    return model


def _image(seed=0, size=(96, 128)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (3, *size), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny Mask R-CNN config, a random model of it and its weights as a Detectron2 file."""
    cfg = _cfg(TINY_CONFIG)
    model = _randomize(_model(cfg), 1)
    path = tmp_path_factory.mktemp("tiny") / "model.pth"
    torch.save({"model": model.state_dict(), "iteration": 7}, path)
    return cfg, model, path


def test_cutler_cascade_file_loads_strictly_and_predicts_as_native(tmp_path):
    cfg = _cfg(CUTLER_CASCADE, "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128")
    source = _model(cfg, seed=2)  # Detectron2's initialisation: boxes and scores of a sane range
    state = source.state_dict()
    for key, shape in CUTLER_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    path = tmp_path / "cutler_cascade_final.pth"
    torch.save({"model": state}, path)

    loaded = _model(cfg, seed=5)
    checkpointer = CadCheckpointer(loaded, cfg=cfg)
    messages = []
    checkpointer.logger.addHandler(_Capture(messages))
    checkpointer.load(str(path), checkpointables=[])
    assert not any("not found in the checkpoint" in m or "not used by the model" in m for m in messages), messages
    inputs = [{"image": _image(), "height": 96, "width": 128}]
    with torch.no_grad():
        a, b = loaded(inputs)[0]["instances"], source(inputs)[0]["instances"]
    assert len(a) == 100
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_masks, b.pred_masks)


class _Capture(logging.Handler):
    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def emit(self, record):
        self.sink.append(record.getMessage())


def test_full_checkpoint_mismatches_are_one_line_errors(tiny, tmp_path):
    cfg, model, _ = tiny
    state = dict(model.state_dict())
    state.pop("roi_heads.box_predictor.cls_score.weight")
    state["roi_heads.extra.weight"] = torch.zeros(2)
    state["roi_heads.box_predictor.bbox_pred.bias"] = torch.zeros(9)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_model(cfg), str(path), cfg)
    text = str(e.value)
    assert "\n" not in text and "(Detectron2 layout)" in text
    assert re.search(r"1 missing \(roi_heads.box_predictor.cls_score.weight\)", text), text
    assert re.search(r"1 unexpected \(roi_heads.extra.weight\)", text), text
    assert re.search(r"1 mis-shaped \(roi_heads.box_predictor.bbox_pred.bias \(9,\) in the file vs \(4,\)\)", text), text


def _assert_same_state(expected: torch.nn.Module, loaded: torch.nn.Module) -> None:
    for k, v in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_bare_state_dict(tiny, tmp_path):
    cfg, model, _ = tiny
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    target = _model(cfg, seed=9)
    load_checkpoint(target, str(bare), cfg)
    _assert_same_state(model, target)


def test_wrong_family_is_one_line(tiny, tmp_path):
    _, _, path = tiny
    cfg = _cfg(TINY_M2F)
    with pytest.raises(CheckpointError, match=r"does not match .*another model family") as e:
        load_checkpoint(_model(cfg), str(path), cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["text", "png", "truncated", "list", "unknown-dict", "empty-weights"])
def test_not_a_checkpoint(tiny, tmp_path, kind):
    cfg, _, good = tiny
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("hello, not weights\n")
    elif kind == "png":
        path = tmp_path / "x.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    elif kind == "unknown-dict":
        torch.save({"net": {"a": torch.zeros(1)}, "epoch": 3}, path)
    pattern = {"list": "holds a list", "unknown-dict": r"no layout cad knows \(top-level keys: epoch, net\)",
               "empty-weights": "no weights to evaluate"}.get(kind, "cannot read .* as a checkpoint")
    with pytest.raises(CheckpointError, match=pattern) as e:
        load_checkpoint(_model(cfg), "" if kind == "empty-weights" else str(path), cfg)
    assert "\n" not in str(e.value)


def test_backbone_only_initialisation(tiny, tmp_path, caplog):
    cfg, _, _ = tiny
    resnet = torchvision.models.resnet18()
    tv, pkl = tmp_path / "r18.pth", tmp_path / "r18_d2.pkl"
    torch.save(resnet.state_dict(), tv)
    convert_torchvision_checkpoint(tv, pkl)

    model = _model(cfg)
    with caplog.at_level(logging.INFO, logger="cad.checkpoint.loader"):
        load_checkpoint(model, str(pkl), cfg, for_training=True)
    # ResNet-18: stem conv + 8 blocks x 2 convs + 3 shortcuts = 20 conv weights; the GN model has
    # no BatchNorm statistics, and its GN weights/biases (named `norm.*`) match the file's.
    conv_keys = [k for k in model.state_dict() if k.startswith("backbone.bottom_up.") and k.endswith("weight") and ".norm." not in k]
    assert len(conv_keys) == 20
    assert torch.equal(model.state_dict()["backbone.bottom_up.stem.conv1.weight"], resnet.conv1.weight)
    line = next(r.getMessage() for r in caplog.records if "Backbone-only" in r.getMessage())
    assert re.search(r"loaded 60 backbone tensors \(100 in the file, 40 unused", line), line
    # the torchvision file itself (torchvision_resnet layout, converted in memory) does the same
    direct = _model(cfg)
    load_checkpoint(direct, str(tv), cfg, for_training=True)
    _assert_same_state(model, direct)

    with pytest.raises(CheckpointError, match="backbone-only initialisation .*evaluation needs a full model"):
        load_checkpoint(_model(cfg), str(pkl), cfg)

    data = pickle.loads(pkl.read_bytes())
    bad = dict(data, model={f"zz_{k}": v for k, v in data["model"].items()})
    (tmp_path / "none.pkl").write_bytes(pickle.dumps(bad))
    with pytest.raises(CheckpointError, match="filled none"):
        load_checkpoint(_model(cfg), str(tmp_path / "none.pkl"), cfg, for_training=True)
    data["model"]["res3.0.conv1.weight"] = np.zeros((128, 64, 1, 1), np.float32)
    (tmp_path / "shape.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(CheckpointError, match=r"1 backbone tensors have the wrong shape \(res3.0.conv1.weight"):
        load_checkpoint(_model(cfg), str(tmp_path / "shape.pkl"), cfg, for_training=True)


def test_build_loaded_model_equals_saved(tiny):
    cfg, model, path = tiny
    loaded = build_loaded_model(cfg, str(path))
    assert not loaded.training
    _assert_same_state(model, loaded)


@pytest.mark.parametrize("num_gpus", ["1", "2"])
def test_train_net_eval_only_text_file_is_one_line(tmp_path, num_gpus):
    """Also when the error is raised in the worker processes of --num-gpus 2 (no worker traceback)."""
    weights = tmp_path / "weights.pth"
    weights.write_text("not a checkpoint\n")
    proc = run_tool("train_net.py", "--config-file", str(TINY_CONFIG), "--eval-only", "--num-gpus", num_gpus, *TINY_OPTS,
                    "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and re.match(r"error: cannot read '.*weights.pth' as a checkpoint", lines[0]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Terminating process" not in proc.stderr


LOST_SYNTHETIC = REPO / "configs" / "LOST" / "lost_synthetic.yaml"
TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def test_lost_takes_model_weights_as_its_dino_vit(tmp_path):
    """MODEL.WEIGHTS = an official-layout DINO file gives the same ViT and boxes as CAD.DISCOVERY.WEIGHTS."""
    ckpt = str(save_random_checkpoint("dino_vits16", tmp_path / "dino_deitsmall16_pretrain.pth", seed=1, **TINY_VIT))
    via_model = build_loaded_model(_cfg(LOST_SYNTHETIC, "MODEL.WEIGHTS", ckpt, "CAD.DISCOVERY.WEIGHTS", "[]"))
    via_discovery = build_loaded_model(_cfg(LOST_SYNTHETIC, "CAD.DISCOVERY.WEIGHTS", f"['{ckpt}']"))
    assert via_model.method._model is not None, "the checkpointer loads the ViT eagerly"
    for k, v in via_discovery.method.model.state_dict().items():
        assert torch.equal(via_model.method.model.state_dict()[k], v), k
    inputs = [{"image": _image(3, (64, 80)), "height": 64, "width": 80}]
    a, b = via_model(inputs)[0]["instances"], via_discovery(inputs)[0]["instances"]
    assert len(a) == 1 and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)


def test_discovery_model_weights_errors(tiny, tmp_path):
    _, _, detectron2_file = tiny
    with pytest.raises(ConfigError, match=r"^'.*model.pth' \(top-level keys: iteration, model\) is not a DINO ViT file \(dino layout\) for dino_vits16$"):
        build_loaded_model(_cfg(LOST_SYNTHETIC, "MODEL.WEIGHTS", str(detectron2_file), "CAD.DISCOVERY.WEIGHTS", "[]"))
    with pytest.raises(ConfigError, match="both give the LOST ViT"):  # lost_synthetic.yaml sets WEIGHTS ["random"]
        build_loaded_model(_cfg(LOST_SYNTHETIC, "MODEL.WEIGHTS", str(detectron2_file)))
    with pytest.raises(ConfigError, match="VoteCut runs several ViTs: give their files in CAD.DISCOVERY.WEIGHTS"):
        build_loaded_model(_cfg(REPO / "configs" / "CuVLER" / "votecut_synthetic.yaml", "MODEL.WEIGHTS", str(detectron2_file)))


def test_lost_paper_config_eval_only_with_model_weights(tmp_path):
    """The model zoo's LOST command (docs/model_zoo.md, E3): --eval-only MODEL.WEIGHTS <DINO file> on
    configs/LOST/lost_dino_vits16_voc07.yaml (here a random full-size ViT-S/16 in DINO's layout, on
    the tiny synthetic split)."""
    from cad.engine.cli import run as train_net

    ckpt = save_random_checkpoint("dino_vits16", tmp_path / "dino_deitsmall16_pretrain.pth", seed=4)
    argv = ["--config-file", str(REPO / "configs" / "LOST" / "lost_dino_vits16_voc07.yaml"), "--eval-only",
            "--test-dataset", "synthetic_shapes_tiny_val", "MODEL.WEIGHTS", str(ckpt), "MODEL.DEVICE", "cpu",
            "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1", "OUTPUT_DIR", str(tmp_path / "o")]
    assert train_net(argv) == 0
    assert "corloc" in json.loads((tmp_path / "o" / "eval_results.json").read_text())


def _save_with_cuda_storages(obj, path):
    """torch.save(obj) with every storage tagged "cuda:0", as a file saved from GPU tensors (the
    official DIOD/xMOD files) is, written without a GPU: the location strings of the pickle are edited."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=2)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            out.writestr(info.filename, data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks reading GPU-tagged storages without CUDA")
def test_file_saved_from_gpu_tensors_loads_on_cpu(tiny, tmp_path):
    cfg, model, _ = tiny
    path = tmp_path / "gpu.pth"
    _save_with_cuda_storages({"model": model.state_dict()}, path)
    with pytest.raises(RuntimeError, match="CUDA device"):
        torch.load(path, weights_only=True)  # the storages really are tagged cuda:0
    target = _model(cfg, seed=4)
    load_checkpoint(target, str(path), cfg)
    _assert_same_state(model, target)


def test_declared_partial_initialisation(tiny, tmp_path):
    cfg, model, _ = tiny
    path = tmp_path / "no_mask_head.pth"
    torch.save({"model": {k: v for k, v in model.state_dict().items() if not k.startswith("roi_heads.mask_head.")}}, path)
    declared = _cfg(TINY_CONFIG, "CAD.WEIGHTS_MAY_MISS", "['roi_heads.mask_head.']")
    target = _model(declared, seed=3)
    load_checkpoint(target, str(path), declared, for_training=True)
    assert torch.equal(target.state_dict()["roi_heads.box_predictor.cls_score.weight"], model.state_dict()["roi_heads.box_predictor.cls_score.weight"])
    with pytest.raises(CheckpointError, match=r"missing \(roi_heads.mask_head"):
        load_checkpoint(_model(cfg), str(path), cfg, for_training=True)  # not declared
    with pytest.raises(CheckpointError, match=r"missing \(roi_heads.mask_head"):
        load_checkpoint(_model(declared), str(path), declared)  # evaluation stays strict


def test_xmod_starts_from_a_cad_diod_file_with_declared_3d(tmp_path):
    """A cad-trained DIOD file (2D networks only) into xMOD, the 3D networks declared in
    CAD.WEIGHTS_MAY_MISS (the official files go through CAD.MOTION.WEIGHTS_3D instead)."""
    diod_cfg = _cfg(REPO / "configs" / "DIOD" / "diod_tri_pd_ts.yaml")
    diod = _randomize(_model(diod_cfg), 7)
    path = tmp_path / "diod_model_final.pth"
    torch.save({"model": diod.state_dict()}, path)
    cfg = _cfg(REPO / "configs" / "xMOD" / "xmod_tri_pd.yaml", "MODEL.WEIGHTS", str(path), "CAD.MOTION.WEIGHTS_3D", "",
               "CAD.WEIGHTS_MAY_MISS", "['students.3d.', 'teachers.3d.']")
    xmod = _model(cfg)
    load_checkpoint(xmod, str(path), cfg, for_training=True)
    for k, v in diod.state_dict().items():
        assert torch.equal(xmod.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match=r"missing \(students.3d"):
        load_checkpoint(_model(cfg), str(path), cfg)  # evaluating it as an xMOD model: refused
