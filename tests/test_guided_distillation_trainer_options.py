"""The official trainer's smaller tools: SSL.FREQ, model_best.pth (BestMetricCheckpointer) and
test-time augmentation (TEST.AUG) of Mask2Former instance segmentation."""
import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from cad.config import ConfigError, add_cad_config
from cad.distillation.guided import GuidedDistillationStep
from cad.engine.best_checkpoint import BestMetricCheckpointer
from cad.modeling.mask2former.solver import build_mask2former_optimizer
from cad.modeling.mask2former.tta import Mask2FormerWithTTA
from conftest import REPO

torch.set_num_threads(1)


def _tiny_cfg(*opts):
    cfg = get_cfg()
    add_cad_config(cfg)
    cfg.merge_from_file(str(REPO / "configs/GuidedDistillation/mask2former_tiny_synthetic_student.yaml"))
    cfg.merge_from_list(["MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64", "MODEL.MASK_FORMER.DEC_LAYERS", "2", *opts])
    return cfg


def _image(seed: int, h: int = 32, w: int = 48) -> torch.Tensor:
    return torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_ssl_freq_draws_unlabeled_batches_every_freq_iterations():
    torch.manual_seed(0)
    cfg = _tiny_cfg("SSL.FREQ", "2", "SSL.BURNIN_ITER", "0", "SSL.CLASS_THRESH", "0.0")
    student, teacher = build_model(cfg), build_model(cfg)
    inst = Instances((32, 48))
    inst.gt_classes = torch.tensor([0])
    inst.gt_masks = torch.zeros(1, 32, 48, dtype=torch.bool)
    inst.gt_masks[0, 4:20, 8:30] = True
    labeled = itertools.repeat([{"image": _image(0), "instances": inst}])
    drawn = []

    def unlabeled():
        for i in itertools.count():
            drawn.append(i)
            yield [{"image": _image(1), "image_strong": _image(2), "height": 32, "width": 48}]

    step = GuidedDistillationStep(cfg, student, teacher, labeled, unlabeled(), build_mask2former_optimizer(cfg, student))
    keys = []
    with EventStorage() as storage:
        for it in range(4):
            storage.iter = step.iter = it
            step.run_step()
            keys.append({k for k, (_, i) in storage.latest().items() if k.endswith("_ssl") and i == it})
    # unlabeled batch, pseudo-labels and unlabeled loss at iterations 0 and 2 only (iteration % FREQ == 0)
    assert len(drawn) == 2
    assert [bool(k) for k in keys] == [True, False, True, False] and "loss_ce_ssl" in keys[0]
    # the teacher follows the student every iteration (EMA after BURNIN_ITER 0), not only every FREQ
    assert not torch.equal(teacher.sem_seg_head.predictor.class_embed.weight, student.sem_seg_head.predictor.class_embed.weight)
    with pytest.raises(ConfigError, match="SSL.FREQ must be >= 1"):
        GuidedDistillationStep(_tiny_cfg("SSL.FREQ", "0"), student, teacher, labeled, unlabeled(), step.optimizer)


class _Checkpointer:
    def __init__(self):
        self.saved = []

    def save(self, name, **extra):
        self.saved.append((name, extra["iteration"]))


def test_best_checkpoint_saves_improvements_and_resumes_its_record():
    ckpt = _Checkpointer()
    hook = BestMetricCheckpointer(10, ckpt, "segm/AP", "max")
    hook.trainer = SimpleNamespace(iter=0, max_iter=40, storage=None)
    with EventStorage() as storage:
        hook.trainer.storage = storage
        for it, ap in ((9, 20.0), (19, 25.0), (29, 24.0)):
            storage.iter = hook.trainer.iter = it
            storage.put_scalar("segm/AP", ap)
            hook.after_step()
        assert ckpt.saved == [("model_best", 9), ("model_best", 19)]  # 24 < 25: not saved
        state = hook.state_dict()
        resumed = BestMetricCheckpointer(10, ckpt, "segm/AP", "max")
        resumed.load_state_dict(state)
        resumed.trainer = SimpleNamespace(iter=39, max_iter=40, storage=storage)
        storage.iter = 40  # the final evaluation is stored one past the last iteration
        storage.put_scalar("segm/AP", 23.0)
        resumed.after_train()
        assert ckpt.saved[-1] == ("model_best", 19) and resumed.best_metric == 25.0  # a worse model is not saved
        storage.put_scalar("segm/AP", 30.0)
        resumed.after_train()
        assert ckpt.saved[-1] == ("model_best", 39)  # the weights of the last iteration run
        missing = BestMetricCheckpointer(10, ckpt, "student/segm/AP", "max")
        missing.trainer = resumed.trainer
        with pytest.raises(ConfigError, match="'student/segm/AP' is not among the evaluation results \\(segm/AP\\)"):
            missing.after_train()


class _FlipEquivariant(nn.Module):
    """A stand-in Mask2Former whose masks are the image's first channel (so a flipped input gives
    flipped masks) and whose class scores do not depend on the image; records what reaches
    the instance inference."""

    def __init__(self, queries: int = 3, classes: int = 2):
        super().__init__()
        self.logits = torch.randn(queries, classes + 1, generator=torch.Generator().manual_seed(0))
        self.queries, self.seen = queries, []

    def preprocess(self, inputs):
        return ImageList.from_tensors([x["image"].float() for x in inputs], 4)

    def predict(self, images):
        masks = F.avg_pool2d(images.tensor[:, :1] / 64.0 - 2.0, 4)  # 1/4 resolution, like Mask2Former
        offsets = torch.arange(self.queries, dtype=torch.float32).view(1, -1, 1, 1)
        return {"pred_logits": self.logits[None].expand(len(images), -1, -1), "pred_masks": masks + offsets}

    def instances(self, mask_cls, mask_pred):
        self.seen.append((mask_cls, mask_pred))
        return mask_pred


def _tta(model, sizes, flip):
    cfg = _tiny_cfg("TEST.AUG.MIN_SIZES", str(tuple(sizes)), "TEST.AUG.MAX_SIZE", "1000", "TEST.AUG.FLIP", str(flip))
    return Mask2FormerWithTTA(cfg, model)


def test_tta_flips_predictions_back_and_averages_views():
    fake = _FlipEquivariant()
    inp = {"image": _image(3, 32, 48), "height": 32, "width": 48}
    _tta(fake, (32,), False)([dict(inp)])
    single_cls, single_masks = fake.seen[-1]
    # with the flipped view flipped back, a flip-equivariant model's average is its single view
    _tta(fake, (32,), True)([dict(inp)])
    flip_cls, flip_masks = fake.seen[-1]
    assert torch.allclose(flip_cls, single_cls, atol=1e-6) and torch.allclose(flip_masks, single_masks, atol=1e-4)
    # averaged in probability space over views: two scales -> mean of the two views' probabilities
    _tta(fake, (64,), False)([dict(inp)])
    large = fake.seen[-1][1]
    _tta(fake, (32, 64), False)([dict(inp)])
    expected = torch.logit((single_masks.sigmoid() + large.sigmoid()) / 2)
    assert torch.allclose(fake.seen[-1][1], expected, atol=1e-4) and not torch.allclose(large, single_masks, atol=1e-2)


def test_tta_with_one_view_is_the_models_own_inference():
    torch.manual_seed(0)
    cfg = _tiny_cfg()
    model = build_model(cfg).eval()
    inp = {"image": _image(4, 48, 64), "height": 48, "width": 64}
    with torch.no_grad():
        plain = model([dict(inp)])[0]["instances"]
    tta = _tta(model, (48,), False)([dict(inp)])[0]["instances"]
    order_p, order_t = plain.scores.argsort(descending=True), tta.scores.argsort(descending=True)
    assert torch.allclose(plain.scores[order_p], tta.scores[order_t], atol=1e-5)
    assert torch.equal(plain.pred_classes[order_p][:5], tta.pred_classes[order_t][:5])
    assert (plain.pred_masks[order_p][:5] != tta.pred_masks[order_t][:5]).float().mean() < 1e-3


def test_tta_of_other_models_is_refused():
    from cad.engine.trainer import CadTrainer

    cfg = get_cfg()
    add_cad_config(cfg)  # META_ARCHITECTURE GeneralizedRCNN
    with pytest.raises(ConfigError, match="implemented for Mask2Former, not GeneralizedRCNN"):
        CadTrainer.with_test_time_augmentation(cfg, nn.Module())
