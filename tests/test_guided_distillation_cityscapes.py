"""Guided Distillation on Cityscapes: the configs (every backbone) equal to the official ones, the official
labeled lists, CityscapesInstanceEvaluator, and the README's example commands on a generated
Cityscapes-layout split (registration -> stage 1 -> stage 2 -> evaluation)."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Instances
from PIL import Image

from cad.config import ConfigError, add_cad_config
from cad.data.cityscapes_lists import OFFICIAL_LIST_SHA256, names_sha256
from cad.data.paths import DatasetMissingError
from cad.data.synthetic_cityscapes import CityscapesLayoutSplit, image_stem, write_cityscapes_split
from cad.engine.cli import run
from cad.evaluation.build import build_evaluator
from conftest import REPO, cfg_item, merged_cfg

CITYSCAPES = REPO / "configs" / "GuidedDistillation" / "cityscapes"
R50 = CITYSCAPES / "maskformer2_R50_bs16_90k.yaml"
LISTED = {5: (0, 3, 5), 10: (1, 2, 4, 6)}  # images of the generated train split in perc_{5,10}.txt
TINY = [
    "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10", "MODEL.MASK_FORMER.NHEADS", "2", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "TEST.DETECTIONS_PER_IMAGE", "10",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.CROP.SIZE", "(64,96)",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2", "SSL.IMS_PER_BATCH_UNLABELED", "2",
    "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0", "CAD.NUM_THREADS", "1", "TEST.EVAL_PERIOD", "0",
]

# The official configs/cityscapes/instance-segmentation/{Base-Cityscapes-InstanceSegmentation,
# maskformer2_R50_bs16_90k}.yaml (GuidedDistillation b48f2a8), every key cad has, by cad's name.
OFFICIAL_R50 = {
    "MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530], "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.STEM_OUT_CHANNELS": 64, "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"], "MODEL.RESNETS.NORM": "SyncBN",
    "DATASETS.TRAIN": ("cityscapes_fine_instance_seg_train",), "DATASETS.TEST": ("cityscapes_fine_instance_seg_val",),
    "SOLVER.IMS_PER_BATCH": 16, "SOLVER.BASE_LR": 0.0001, "SOLVER.MAX_ITER": 90000, "SOLVER.WARMUP_FACTOR": 1.0,
    "SOLVER.WARMUP_ITERS": 0, "SOLVER.WEIGHT_DECAY": 0.05, "SOLVER.OPTIMIZER": "ADAMW", "SOLVER.LR_SCHEDULER_NAME": "WarmupPolyLR",
    "SOLVER.BACKBONE_MULTIPLIER": 0.1, "SOLVER.CLIP_GRADIENTS.ENABLED": True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.01, "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0, "SOLVER.AMP.ENABLED": True,
    "SOLVER.POLY_LR_POWER": 0.9, "SOLVER.POLY_LR_CONSTANT_ENDING": 0.0,  # add_deeplab_config in train_net.setup
    "SOLVER.CHECKPOINT_PERIOD": 5000,  # Detectron2's default: the official BestCheckpointer period
    "INPUT.MIN_SIZE_TRAIN": [int(x * 0.1 * 1024) for x in range(5, 21)], "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MIN_SIZE_TEST": 1024, "INPUT.MAX_SIZE_TRAIN": 4096, "INPUT.MAX_SIZE_TEST": 2048, "INPUT.CROP.ENABLED": True,
    "INPUT.CROP.TYPE": "absolute", "INPUT.CROP.SIZE": [512, 1024], "INPUT.COLOR_AUG_SSD": True, "INPUT.FORMAT": "RGB",
    "INPUT.MASK2FORMER_AUGMENTATION": "mask_former_instance",  # official INPUT.DATASET_MAPPER_NAME "mask_former_instance"
    "TEST.EVAL_PERIOD": 5000, "TEST.AUG.ENABLED": False, "TEST.AUG.MIN_SIZES": [512, 768, 1024, 1280, 1536, 1792],
    "TEST.AUG.MAX_SIZE": 4096, "TEST.AUG.FLIP": True, "TEST.DETECTIONS_PER_IMAGE": 100,
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": True, "DATALOADER.NUM_WORKERS": 4, "DATALOADER.SAMPLER_TRAIN": "TrainingSampler",
    "MODEL.META_ARCHITECTURE": "Mask2Former",  # official "MaskFormer": the class cad registers as Mask2Former
    "MODEL.SEM_SEG_HEAD.NAME": "MaskFormerHead", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE": 255, "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 8,
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": 1.0, "MODEL.SEM_SEG_HEAD.CONVS_DIM": 256, "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    "MODEL.SEM_SEG_HEAD.NORM": "GN", "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES": ["res2", "res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE": 4, "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 6,
    "MODEL.MASK_FORMER.DEEP_SUPERVISION": True, "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": 0.1, "MODEL.MASK_FORMER.CLASS_WEIGHT": 2.0,
    "MODEL.MASK_FORMER.MASK_WEIGHT": 5.0, "MODEL.MASK_FORMER.DICE_WEIGHT": 5.0, "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100, "MODEL.MASK_FORMER.NHEADS": 8, "MODEL.MASK_FORMER.DROPOUT": 0.0,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048, "MODEL.MASK_FORMER.PRE_NORM": False, "MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ": False,
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY": 32, "MODEL.MASK_FORMER.DEC_LAYERS": 10, "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 12544,
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": 3.0, "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": 0.75,
    # SSL keys: none in the official file, so the official defaults (config/add_cfg.py) and train_net.setup
    "SSL.TRAIN_SSL": True, "SSL.PERCENTAGE": 100, "SSL.BURNIN_ITER": 50000, "SSL.EMA_DECAY": 0.9996, "SSL.FREQ": 1,
    "SSL.EVAL_WHO": "student", "SSL.LABELED_SAMPLER_TRAIN": "RepeatFactorTrainingSampler", "SSL.LABELED_REPEAT_THRESHOLD": 10.0,
    "SSL.IMS_PER_BATCH_UNLABELED": 16, "SSL.UNLABELED_INCLUDES_LABELED": True,
}
# Official keys cad has no key for, and why (each checked absent below).
NOT_IN_CAD = {
    "MODEL.RESNETS.STEM_TYPE": "commented 'not used' in the official file",
    "MODEL.RESNETS.RES5_MULTI_GRID": "commented 'not used'",
    "INPUT.SIZE_DIVISIBILITY": "-1: the official mappers pad nothing; cad's never pad",
    "INPUT.DATASET_MAPPER_NAME": "INPUT.MASK2FORMER_AUGMENTATION",
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": "semantic-segmentation crops only",
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "cad has the one decoder",
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "cad has the one decoder input",
    "MODEL.MASK_FORMER.ENC_LAYERS": "0: no transformer encoder in the decoder",
    "MODEL.MASK_FORMER.TEST": "instance-only model (SEMANTIC_ON/PANOPTIC_ON False, INSTANCE_ON True)",
}




def test_configs_equal_the_official_ones_key_by_key():
    cfg = merged_cfg(R50)
    for key, value in OFFICIAL_R50.items():
        got = cfg_item(cfg, key)
        assert (list(got) if isinstance(got, (list, tuple)) and not key.startswith("DATASETS") else got) == value, key
    for key in NOT_IN_CAD:
        with pytest.raises(KeyError):
            cfg_item(cfg, key)
    for pct in (5, 10, 20, 30):
        for stage, ssl in (("teacher", False), ("student", True)):
            variant = merged_cfg(CITYSCAPES / f"r50_{stage}_{pct}pct.yaml")
            assert (variant.SSL.PERCENTAGE, variant.SSL.TRAIN_SSL) == (pct, ssl)
            variant.merge_from_list(["SSL.PERCENTAGE", "100", "SSL.TRAIN_SSL", "True", "OUTPUT_DIR", cfg.OUTPUT_DIR])
            assert variant == cfg  # nothing else differs from the official file



# The official Cityscapes configs of the other backbones (configs/cityscapes/instance-segmentation/,
# GuidedDistillation b48f2a8; each _BASE_ maskformer2_R50_bs16_90k.yaml), by cad's names: cad config
# (the official file's path) -> (every value the official file sets, the COCO config of the same
# backbone). The DeiT and DINOv2 files also carry the Swin-B MODEL.SWIN block (EMBED_DIM 128, ...,
# PRETRAIN_IMG_SIZE 384), which their backbones do not read: left out, as in the COCO ViT configs.
_OFFICIAL_MEAN_STD = {"MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530], "MODEL.PIXEL_STD": [58.395, 57.120, 57.375]}


def _swin(embed, depths, heads, window, weights, **extra):
    return {"MODEL.BACKBONE.NAME": "D2SwinTransformer", "MODEL.SWIN.EMBED_DIM": embed, "MODEL.SWIN.DEPTHS": depths,
            "MODEL.SWIN.NUM_HEADS": heads, "MODEL.SWIN.WINDOW_SIZE": window, "MODEL.SWIN.APE": False,
            "MODEL.SWIN.DROP_PATH_RATE": 0.3, "MODEL.SWIN.PATCH_NORM": True, "MODEL.WEIGHTS": weights,
            **_OFFICIAL_MEAN_STD, **extra}


def _vit(name):
    return {"MODEL.BACKBONE.NAME": name, "MODEL.WEIGHTS": "", **_OFFICIAL_MEAN_STD}


OFFICIAL_BACKBONES = {
    "maskformer2_R101_bs16_90k.yaml": ({
        "MODEL.WEIGHTS": "R-101.pkl", "MODEL.RESNETS.DEPTH": 101, "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
        "MODEL.RESNETS.STRIDE_IN_1X1": False, "MODEL.RESNETS.OUT_FEATURES": ["res2", "res3", "res4", "res5"],
        "MODEL.RESNETS.NORM": "SyncBN"}, "maskformer2_R101_bs16_50ep.yaml"),
    "swin/maskformer2_swin_tiny_bs16_90k.yaml": (
        _swin(96, [2, 2, 6, 2], [3, 6, 12, 24], 7, "swin_tiny_patch4_window7_224.pkl"), "swin/maskformer2_swin_tiny_bs16_50ep.yaml"),
    "swin/maskformer2_swin_small_bs16_90k.yaml": (
        _swin(96, [2, 2, 18, 2], [3, 6, 12, 24], 7, "swin_small_patch4_window7_224.pkl"), "swin/maskformer2_swin_small_bs16_50ep.yaml"),
    "swin/maskformer2_swin_base_IN21k_384_bs16_90k.yaml": (
        _swin(128, [2, 2, 18, 2], [4, 8, 16, 32], 12, "swin_base_patch4_window12_384_22k.pkl", **{"MODEL.SWIN.PRETRAIN_IMG_SIZE": 384}),
        "swin/maskformer2_swin_base_IN21k_384_bs16_50ep.yaml"),
    "swin/maskformer2_swin_large_IN21k_384_bs16_90k.yaml": (
        _swin(192, [2, 2, 18, 2], [6, 12, 24, 48], 12, "swin_large_patch4_window12_384_22k.pkl",
              **{"MODEL.SWIN.PRETRAIN_IMG_SIZE": 384, "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 200}),
        "swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml"),
    # "b14" is only the file's name: DeiTBaseBackbone is torch.hub's deit_base_patch16_384 (patch 16)
    "deit/maskformer2_deit_base_b14_bs16_90k.yaml": (_vit("DeiTBaseBackbone"), "deit/maskformer2_deit_base_bs16_50ep.yaml"),
    "dinov2/maskformer2_dinov2_b14_bs16_90k.yaml": (_vit("DinoV2BaseBackbone"), "Base-DINOv2-teacher.yaml"),
    "dinov2/maskformer2_dinov2_l14_bs16_90k.yaml": (_vit("DinoV2LargeBackbone"), "dinov2/maskformer2_dinov2_large_bs16_50ep.yaml"),
}


def _set(cfg, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        cfg = cfg[part]
    cfg[leaf] = value


@pytest.mark.parametrize("config", sorted(OFFICIAL_BACKBONES))
def test_backbone_configs_equal_the_official_ones_key_by_key(config):
    official, _ = OFFICIAL_BACKBONES[config]
    cfg, r50 = merged_cfg(CITYSCAPES / config), merged_cfg(R50)
    for key, value in official.items():
        got = cfg_item(cfg, key)
        assert (list(got) if isinstance(got, (list, tuple)) else got) == value, (config, key)
        _set(cfg, key, cfg_item(r50, key))
    for key in NOT_IN_CAD:
        with pytest.raises(KeyError):
            cfg_item(cfg, key)
    assert cfg == r50  # every other value is the official R50 file's (pinned by OFFICIAL_R50)


@pytest.mark.parametrize("config", sorted(OFFICIAL_BACKBONES))
def test_backbone_configs_build_and_run_at_cityscapes_sizes(config):
    """Full size on the meta device (no weights): the model builds; its backbone has the names and
    shapes of the COCO config's (pinned against the official backbones by
    tests/test_guided_distillation_backbones.py); the backbone runs on the training crop (512 x 1024)
    and the test size (1024 x 2048): DINOv2 rounds them up to 518 x 1036 / 1036 x 2058 (37 x 74 /
    74 x 147 tokens), DeiT keeps them (32 x 64 / 64 x 128), Swin pads its windows, as the official code."""
    opts = ["CAD.VIT.WEIGHTS", "random", "MODEL.DEVICE", "meta"]
    cfg = merged_cfg(CITYSCAPES / config)
    cfg.merge_from_list(opts)
    with torch.device("meta"):
        model = build_model(cfg)
        coco = build_backbone(merged_cfg(REPO / "configs/GuidedDistillation/coco" / OFFICIAL_BACKBONES[config][1],
                                           [*opts, "MODEL.RESNETS.NORM", "SyncBN"]))
    assert {k: v.shape for k, v in model.backbone.state_dict().items()} == {k: v.shape for k, v in coco.state_dict().items()}
    assert model.sem_seg_head.predictor.class_embed.out_features == 8 + 1
    assert model.sem_seg_head.predictor.query_feat.num_embeddings == cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    shapes = model.backbone.output_shape()
    for height, width in ((512, 1024), (1024, 2048)):
        with torch.no_grad():
            out = model.backbone(torch.empty(1, 3, height, width, device="meta"))
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            k: (1, s.channels, height // s.stride, width // s.stride) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def cityscapes_root(datasets_root):
    """A Cityscapes-layout dataset at $DETECTRON2_DATASETS/cityscapes (Detectron2's builtin
    cityscapes_fine_instance_seg_{train,val} read it) with lists perc_5.txt and perc_10.txt."""
    write_cityscapes_split(datasets_root / "cityscapes", CityscapesLayoutSplit("train", num_images=8, seed=1))
    write_cityscapes_split(datasets_root / "cityscapes", CityscapesLayoutSplit("val", num_images=3, seed=2))
    lists = datasets_root / "data_splits" / "cityscapes"
    lists.mkdir(parents=True, exist_ok=True)
    for pct, indices in LISTED.items():
        (lists / f"perc_{pct}.txt").write_text("".join(f"{image_stem(i)}_gtFine_instanceIds.png\n" for i in indices))
    yield datasets_root
    for folder in ("cityscapes", "data_splits"):  # the suite's other tests see no Cityscapes under the shared root
        shutil.rmtree(datasets_root / folder)


def test_official_lists_partition_the_train_split(cityscapes_root, caplog):
    base = "cityscapes_fine_instance_seg_train"
    with caplog.at_level(logging.WARNING, logger="cad.data.cityscapes_lists"):
        labeled = DatasetCatalog.get(f"{base}_5pct_list_labeled")
    assert "is not the official Guided Distillation 5 % list" in caplog.text
    assert sorted(d["image_id"] for d in labeled) == sorted(f"{image_stem(i)}_leftImg8bit.png" for i in LISTED[5])
    everything = {d["image_id"]: d for d in DatasetCatalog.get(base)}
    for d in labeled:  # the real image files, the annotations Detectron2's loader gives the whole split
        assert Path(d["file_name"]).is_file() and d["file_name"] == everything[d["image_id"]]["file_name"]
        assert d["annotations"] == everything[d["image_id"]]["annotations"] and d["annotations"]
    unlabeled = DatasetCatalog.get(f"{base}_5pct_list_unlabeled")
    assert all(d["annotations"] == [] for d in unlabeled)
    assert sorted(d["image_id"] for d in labeled + unlabeled) == sorted(everything)
    assert MetadataCatalog.get(f"{base}_5pct_list_labeled").evaluator_type == "cityscapes_instance"
    # the official lists are recognised by their names' digest, whatever the order
    assert names_sha256(["b", "a"]) == names_sha256(["a", "b"]) and set(OFFICIAL_LIST_SHA256) == {5, 10, 20, 30}
    with pytest.raises(DatasetMissingError, match="data_splits/cityscapes/perc_20.txt"):
        DatasetCatalog.get(f"{base}_20pct_list_labeled")
    (cityscapes_root / "data_splits" / "cityscapes" / "perc_30.txt").write_text("aachen_000000_000019_leftImg8bit.png\n")
    with pytest.raises(ConfigError, match="line 1: expected <city>_<seq>_<frame>_gtFine_instanceIds.png"):
        DatasetCatalog.get(f"{base}_30pct_list_labeled")


def _instance_ids(d) -> np.ndarray:
    return np.asarray(Image.open(d["file_name"].replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_instanceIds.png")))


def _evaluate(split: str, class_shift: int, tmp_path) -> dict:
    """CityscapesInstanceEvaluator on predictions = the ground-truth instances, classes shifted."""
    from cityscapesscripts.helpers.labels import name2label

    cfg = get_cfg()
    add_cad_config(cfg)
    evaluator = build_evaluator(cfg, split, str(tmp_path))
    classes = MetadataCatalog.get(split).thing_classes
    contiguous = {name2label[c].id: i for i, c in enumerate(classes)}
    evaluator.reset()
    for d in DatasetCatalog.get(split):
        ids = _instance_ids(d)
        inst_ids = [i for i in np.unique(ids) if i >= 1000]
        inst = Instances(ids.shape)
        inst.pred_masks = torch.as_tensor(np.stack([ids == i for i in inst_ids]))
        inst.pred_classes = torch.tensor([(contiguous[i // 1000] + class_shift) % len(classes) for i in inst_ids])
        inst.scores = torch.ones(len(inst_ids))
        evaluator.process([d], [{"instances": inst}])
    return evaluator.evaluate()["segm"]


def test_cityscapes_evaluator_scores_ground_truth_as_perfect(cityscapes_root, tmp_path):
    assert _evaluate("cityscapes_fine_instance_seg_val", 0, tmp_path) == {"AP": 100.0, "AP50": 100.0}
    assert _evaluate("cityscapes_fine_instance_seg_val", 1, tmp_path) == {"AP": 0.0, "AP50": 0.0}  # every class wrong
    assert not (Path.cwd() / "matches.json").exists()  # cityscapesscripts' dump goes to the evaluator's folder


def _run(args, capsys) -> None:
    assert run(args) == 0, capsys.readouterr().err[-3000:]


def test_readme_cityscapes_commands_stage1_stage2_and_evaluation(cityscapes_root, tmp_path, capsys):
    """The README's two Cityscapes R50 5 % commands as written (one process here; the slow test
    below runs them with --num-gpus 2), on the tiny model, then --eval-only of both members + TTA."""
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    _run(["--config-file", str(R50), "SSL.PERCENTAGE", "5", "SSL.TRAIN_SSL", "False", "OUTPUT_DIR", str(teacher), *TINY], capsys)
    saved = (teacher / "config.yaml").read_text()
    assert "cityscapes_fine_instance_seg_train_5pct_list_labeled" in saved and "TRAIN_SSL: false" in saved
    assert set(json.loads((teacher / "eval_results.json").read_text())) == {"segm"}
    best = torch.load(teacher / "model_best.pth", map_location="cpu", weights_only=False)
    assert best["iteration"] == 1 and best["trainer"]["hooks"]["BestMetricCheckpointer"]["best_iter"] == 1  # as model_final

    _run(["--config-file", str(R50), "SSL.PERCENTAGE", "5", "SSL.TRAIN_SSL", "True",
          "SSL.TEACHER_CKPT", str(teacher / "model_final.pth"), "OUTPUT_DIR", str(student), "SSL.BURNIN_ITER", "1",
          *TINY, "SSL.EVAL_WHO", "BOTH"], capsys)
    results = json.loads((student / "eval_results.json").read_text())
    assert set(results) == {"student", "teacher"} and all(set(r) == {"segm"} for r in results.values())
    best = torch.load(student / "model_best.pth", map_location="cpu", weights_only=False)
    assert {k.split(".", 1)[0] for k in best["model"]} == {"modelTeacher", "modelStudent"}
    assert "student/segm/AP" in (student / "metrics.json").read_text()  # the metric model_best.pth tracks

    _run(["--config-file", str(R50), "--eval-only", "MODEL.WEIGHTS", str(student / "model_final.pth"),
          "OUTPUT_DIR", str(tmp_path / "eval"), *TINY, "MODEL.WEIGHTS", str(student / "model_final.pth"),
          "SSL.EVAL_WHO", "BOTH", "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(48,64)", "TEST.AUG.MAX_SIZE", "128"], capsys)
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert {m: set(r) for m, r in results.items()} == {m: {"segm", "segm_TTA"} for m in ("student", "teacher")}
    # one model in the file: BOTH is refused in one line
    assert run(["--config-file", str(R50), "--eval-only", *TINY, "MODEL.WEIGHTS", str(teacher / "model_final.pth"),
                "SSL.EVAL_WHO", "BOTH", "OUTPUT_DIR", str(tmp_path / "eval1")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: SSL.EVAL_WHO BOTH evaluates the teacher and the student")


@pytest.mark.slow
def test_readme_cityscapes_commands_in_two_processes(cityscapes_root, tmp_path, capsys):
    """The README's commands exactly, --num-gpus 2 --num-machines 1 (gloo on CPU)."""
    common = ["--config-file", str(R50), "--num-gpus", "2", "--num-machines", "1", "SSL.PERCENTAGE", "5"]
    _run([*common, "SSL.TRAIN_SSL", "False", "OUTPUT_DIR", str(tmp_path / "teacher"), *TINY], capsys)
    _run([*common, "SSL.TRAIN_SSL", "True", "SSL.TEACHER_CKPT", str(tmp_path / "teacher" / "model_final.pth"),
          "OUTPUT_DIR", str(tmp_path / "student"), "SSL.BURNIN_ITER", "1", *TINY], capsys)
    assert set(json.loads((tmp_path / "student" / "eval_results.json").read_text())) == {"segm"}
