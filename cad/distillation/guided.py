"""Guided Distillation (Berrada et al., WACV 2024): semi-supervised Mask2Former.

Stage 1 (`SSL.TRAIN_SSL False`): Mask2Former trained on the labeled split only.
Stage 2 (`SSL.TRAIN_SSL True`): a student (backbone-initialised from MODEL.WEIGHTS) is trained
on labeled batches plus unlabeled batches pseudo-labelled by a teacher. The teacher is the
frozen stage-1 model (SSL.TEACHER_CKPT) until SSL.BURNIN_ITER ("guided burn-in"), then a copy
of the student, then the student's EMA (SSL.EMA_DECAY). The teacher sees the weak view, the
student the strong (photometric) view; unlabeled losses are weighted by
SSL.UNLABELED_LOSS_WEIGHT. Checkpoints hold `modelTeacher.*` and `modelStudent.*` (the official
`EnsembleTSModel` names, GuidedDistillation modules/ensemble.py), so --resume restores both, the
optimiser, the scheduler and the iteration, and the files interchange with the official ones
(see `cad.checkpoint.layouts.guided_distillation`).
"""
import logging
import time
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.checkpoint import Checkpointer
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import SimpleTrainer
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from cad.checkpoint.layouts.guided_distillation import GD_STAGE2
from cad.checkpoint.loader import load_checkpoint, read_weights
from cad.config import ConfigError
from cad.data.paths import datasets_root
from cad.data.ssl_splits import register_by_name
from cad.data.views import Mask2FormerInstanceMapper, WeakStrongMapper
from cad.data.worker_batches import build_worker_batched_train_loader
from cad.distillation.ema import ema_update, teacher_decay, unwrap
from cad.engine.setup import check_teacher_checkpoint
from cad.engine.trainer import TRAINER_REGISTRY, CadTrainer, build_ddp_model
from cad.modeling.mask2former.solver import build_mask2former_optimizer

logger = logging.getLogger(__name__)


def filter_pseudo_labels(
    logits: torch.Tensor, mask_logits: torch.Tensor, class_thresh: float = 0.7, mask_thresh: float = 0.5, min_area: float = 5.0
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pseudo-labels of one image from the teacher's final prediction (reference rules).

    logits (Q, K+1) with no-object last; mask_logits (Q, h, w). A query is kept when its argmax
    is not no-object, its max softmax probability over the K+1 classes is > class_thresh, and
    its soft area (sum of mask sigmoids) is > min_area. Returns the kept query indices (T,),
    labels (T,) = argmax, and mask probabilities (T, h, w); binarise them at mask_thresh.
    """
    probs = logits.softmax(-1)
    scores, labels = probs.max(-1)
    mask_probs = mask_logits.sigmoid()
    keep = (labels != logits.shape[-1] - 1) & (scores > class_thresh) & (mask_probs.flatten(1).sum(1) > min_area)
    idx = keep.nonzero().flatten()
    return idx, labels[idx], mask_probs[idx]


def pseudo_instances(
    outputs: Dict, images: ImageList, class_thresh: float, mask_thresh: float, min_area: float
) -> List[Instances]:
    """Teacher outputs on a padded batch -> per image Instances(gt_classes, gt_masks (T, h, w)
    bool) at the image's (unpadded) input size: the kept mask probabilities are cropped to the
    image's part of the 1/4-resolution canvas, resized bilinearly to (h, w), binarised."""
    h_pad, w_pad = images.tensor.shape[-2:]
    result = []
    for logits, masks, (h, w) in zip(outputs["pred_logits"], outputs["pred_masks"], images.image_sizes):
        _, labels, probs = filter_pseudo_labels(logits.float(), masks.float(), class_thresh, mask_thresh, min_area)
        mh, mw = probs.shape[-2:]
        crop = probs[:, : max(1, round(h * mh / h_pad)), : max(1, round(w * mw / w_pad))]
        if len(crop):
            crop = F.interpolate(crop[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        inst = Instances((h, w))
        inst.gt_classes = labels
        inst.gt_masks = crop.reshape(len(labels), h, w) > mask_thresh
        result.append(inst)
    return result


class TeacherStudent(nn.Module):
    """Holds the teacher and the student under the official `EnsembleTSModel` names
    (`modelTeacher`, `modelStudent`: checkpoint keys `modelTeacher.*`, `modelStudent.*`).
    Evaluation runs on a member (`GuidedDistillationTrainer.test`), not on the pair."""

    def __init__(self, teacher: nn.Module, student: nn.Module):
        super().__init__()
        self.modelTeacher, self.modelStudent = teacher, student  # noqa: N815 (official names)
        self.modelTeacher.requires_grad_(False)

    def member(self, who: str) -> nn.Module:
        """The member `who` names: "student" or "teacher"."""
        return self.modelStudent if who == "student" else self.modelTeacher

    def forward(self, batched_inputs):
        raise RuntimeError("TeacherStudent is not run itself: GuidedDistillationStep trains it, "
                           "GuidedDistillationTrainer.test evaluates its members")


def eval_members(cfg) -> List[str]:
    """The members SSL.EVAL_WHO evaluates: ["student"], ["teacher"] or, for "both", both."""
    who = str(cfg.SSL.EVAL_WHO).lower()
    return ["student", "teacher"] if who == "both" else [who]


class GuidedDistillationStep(SimpleTrainer):
    """One stage-2 iteration: teacher update, pseudo-labels from the teacher on the weak views,
    one student forward on labeled + strong unlabeled images, one backward and step."""

    def __init__(self, cfg, student: nn.Module, teacher: nn.Module, labeled_loader, unlabeled_loader, optimizer):
        super().__init__(student, labeled_loader, optimizer)
        self.teacher = teacher
        self.unlabeled_loader = unlabeled_loader
        self._unlabeled_iter = iter(unlabeled_loader)
        ssl = cfg.SSL
        self.burnin_iter, self.ema_decay = ssl.BURNIN_ITER, ssl.EMA_DECAY
        self.class_thresh, self.mask_thresh, self.min_area = ssl.CLASS_THRESH, ssl.MASK_THRESH, ssl.MIN_MASK_AREA
        self.unlabeled_weight, self.freq = ssl.UNLABELED_LOSS_WEIGHT, ssl.FREQ
        if self.freq < 1:
            raise ConfigError(f"SSL.FREQ must be >= 1, got {self.freq}")
        self.amp = cfg.SOLVER.AMP.ENABLED and torch.cuda.is_available()
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def state_dict(self) -> Dict:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])

    def update_teacher(self, iteration: int) -> None:
        decay = teacher_decay(iteration, self.burnin_iter, self.ema_decay)
        if decay is not None:
            ema_update(self.teacher, self.model, decay)
            if decay == 0.0:
                logger.info("Iteration %d: teacher <- student (end of guided burn-in); EMA from now on", iteration)

    @torch.no_grad()
    def pseudo_label(self, unlabeled: List[Dict]) -> List[Instances]:
        """Teacher (eval mode, fp32) on the weak views -> per-image pseudo-instances."""
        self.teacher.eval()
        images = self.teacher.preprocess(unlabeled)
        outputs = self.teacher.predict(images)
        return pseudo_instances(outputs, images, self.class_thresh, self.mask_thresh, self.min_area)

    def run_step(self):
        """One iteration; the unlabeled batch, its pseudo-labels and loss only at iterations
        divisible by SSL.FREQ (the official MaskFormer's `iter % ssl_freq == 0`; its trainer
        crashes there for FREQ > 1), the teacher update at every iteration (official)."""
        assert self.model.training, "the student must be in training mode"
        start = time.perf_counter()
        do_ssl = self.iter % self.freq == 0
        labeled = next(self._data_loader_iter)
        unlabeled = next(self._unlabeled_iter) if do_ssl else []
        data_time = time.perf_counter() - start
        self.update_teacher(self.iter)
        pseudo = self.pseudo_label(unlabeled) if do_ssl else []
        strong = [
            {"image": u["image_strong"], "instances": p, "height": u["height"], "width": u["width"]}
            for u, p in zip(unlabeled, pseudo)
        ]
        groups = [("", 1.0, len(labeled))] + ([("_ssl", self.unlabeled_weight, len(strong))] if do_ssl else [])
        with torch.autocast("cuda", enabled=self.amp):
            loss_dict = self.model(labeled + strong, loss_groups=groups)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self._write_metrics(loss_dict, data_time)
        if do_ssl:
            get_event_storage().put_scalar("ssl/pseudo_per_image", sum(len(p) for p in pseudo) / max(1, len(pseudo)))
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()


def unlabeled_dataset_names(cfg) -> List[str]:
    """Unlabeled splits: SSL.DATASETS_UNLABELED, or from DATASETS.TRAIN: a `_labeled` split's
    `_unlabeled` twin (with SSL.UNLABELED_INCLUDES_LABELED (official) the labeled split too, so
    the pool is the whole base split), any other split itself (the official unlabeled pool at
    SSL.PERCENTAGE 100 is the whole training split)."""
    names = list(cfg.SSL.DATASETS_UNLABELED)
    if names:
        for name in names:
            register_by_name(name, datasets_root())
        return list(cfg.DATASETS.TRAIN) + names if cfg.SSL.UNLABELED_INCLUDES_LABELED else names
    for name in cfg.DATASETS.TRAIN:
        if not name.endswith("_labeled"):
            names.append(name)
            continue
        twin = name[: -len("_labeled")] + "_unlabeled"
        register_by_name(twin, datasets_root())
        names += [name, twin] if cfg.SSL.UNLABELED_INCLUDES_LABELED else [twin]
    return names


def build_unlabeled_loader(cfg):
    """Unlabeled images (annotations ignored, empty images kept), weak + strong views,
    SSL.IMS_PER_BATCH_UNLABELED images per iteration over all processes."""
    dicts = get_detection_dataset_dicts(unlabeled_dataset_names(cfg), filter_empty=False)
    return build_worker_batched_train_loader(cfg, WeakStrongMapper(cfg), dataset=dicts, sampler=TrainingSampler(len(dicts)),
                                             total_batch_size=cfg.SSL.IMS_PER_BATCH_UNLABELED)


def load_teacher(teacher: nn.Module, cfg) -> None:
    """SSL.TEACHER_CKPT into `teacher`, strictly: a plain Mask2Former file, or the teacher member
    (`modelTeacher.*`) of a Guided Distillation stage-1 or stage-2 file. (The official trainer
    loads TEACHER_CKPT into its whole `EnsembleTSModel`, modules/defaults.py, so a plain file
    would fill nothing there.)"""
    load_checkpoint(teacher, cfg.SSL.TEACHER_CKPT, cfg, member="teacher")


@TRAINER_REGISTRY.register()
class GuidedDistillationTrainer(CadTrainer):
    """Trainer of both stages (cfg.CAD.TRAINER "GuidedDistillationTrainer"): stage 1 is plain
    supervised Mask2Former; stage 2 (SSL.TRAIN_SSL) the teacher-student loop above.

    `build_model` is the plain Mask2Former in both stages (as `--eval-only` and the demo use it:
    from a stage-2 file they load the member SSL.EVAL_WHO names); stage-2 training builds the
    `TeacherStudent` pair in `build_training`."""

    @classmethod
    def build_training(cls, cfg) -> Tuple[nn.Module, SimpleTrainer]:
        """Stage 2: (TeacherStudent, GuidedDistillationStep) with the optimiser on the student and
        DDP around the student only (the teacher is updated by EMA, identically on every rank)."""
        if not cfg.SSL.TRAIN_SSL:
            return super().build_training(cfg)
        teacher = cls.build_model(cfg)
        student = cls.build_model(cfg)
        ensemble = TeacherStudent(teacher, student)
        optimizer = cls.build_optimizer(cfg, student)
        labeled_cfg = cfg.clone()  # the official train_net.setup sets the labeled sampler of stage 2
        labeled_cfg.defrost()
        labeled_cfg.DATALOADER.SAMPLER_TRAIN = cfg.SSL.LABELED_SAMPLER_TRAIN
        labeled_cfg.DATALOADER.REPEAT_THRESHOLD = cfg.SSL.LABELED_REPEAT_THRESHOLD
        labeled_cfg.freeze()
        labeled_loader = cls.build_train_loader(labeled_cfg)
        unlabeled_loader = build_unlabeled_loader(cfg)
        step = GuidedDistillationStep(cfg, build_ddp_model(student), ensemble.modelTeacher, labeled_loader, unlabeled_loader, optimizer)
        return ensemble, step

    @property
    def model(self) -> nn.Module:
        """The model evaluated by the EvalHook: the teacher-student pair in stage 2 (`test`
        evaluates the members SSL.EVAL_WHO names)."""
        return self.checkpointer.model if self.cfg.SSL.TRAIN_SSL else self._trainer.model

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """A stage-2 pair: each member SSL.EVAL_WHO names; with "both", the results of each under
        the keys "student" and "teacher" (evaluator outputs in inference/<member>/<split>).
        (The official trainer evaluates the student during training whatever EVAL_WHO says.)"""
        if not isinstance(model, TeacherStudent):
            return super().test(cfg, model, evaluators)
        members = eval_members(cfg)
        if len(members) == 1:
            return super().test(cfg, model.member(members[0]), evaluators)
        return cls.save_results(cfg, {m: cls.evaluate_model(cfg, model.member(m), m, tta=False) for m in members})

    @classmethod
    def best_checkpoint_metric(cls, cfg) -> str:
        """With SSL.EVAL_WHO BOTH a metric that names no member ("segm/AP") is the student's
        ("student/segm/AP"): the official trainer keeps the best student."""
        metric = cfg.CAD.BEST_CHECKPOINT_METRIC
        if metric and len(eval_members(cfg)) > 1 and metric.split("/", 1)[0] not in ("student", "teacher"):
            return "student/" + metric
        return metric

    @classmethod
    def eval_subfolders(cls, cfg) -> List[str]:
        members = eval_members(cfg)
        return members if len(members) > 1 else [""]

    @classmethod
    def evaluate(cls, cfg, resume: bool = False) -> Dict:
        """`--eval-only`. With SSL.EVAL_WHO BOTH, each member of a stage-2 checkpoint (official or
        cad's) evaluated, results under "student" and "teacher" (the official `--eval-only`
        evaluates the teacher alone for BOTH); `ConfigError` for a file that holds one model."""
        members = eval_members(cfg)
        if len(members) == 1:
            return super().evaluate(cfg, resume)
        last = Checkpointer(nn.Module(), save_dir=cfg.OUTPUT_DIR)
        path = last.get_checkpoint_file() if resume and last.has_checkpoint() else cfg.MODEL.WEIGHTS
        if not GD_STAGE2.matches(read_weights(path)):
            raise ConfigError(f"SSL.EVAL_WHO BOTH evaluates the teacher and the student of a stage-2 checkpoint "
                              f"(modelTeacher.* + modelStudent.*); '{path}' holds one model: use STUDENT or TEACHER")
        results = {}
        for member in members:
            member_cfg = cfg.clone()
            member_cfg.defrost()
            member_cfg.SSL.EVAL_WHO = member
            member_cfg.freeze()
            model = cls.build_model(member_cfg)
            load_checkpoint(model, path, member_cfg)
            results[member] = cls.evaluate_model(member_cfg, model, member)
        return cls.save_results(cfg, results)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_mask2former_optimizer(cfg, unwrap(model))

    @classmethod
    def build_train_loader(cls, cfg):
        return build_worker_batched_train_loader(cfg, Mask2FormerInstanceMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=Mask2FormerInstanceMapper(cfg, False))

    def resume_or_load(self, resume: bool = True) -> None:
        """Stage 2 without a checkpoint to resume: teacher <- SSL.TEACHER_CKPT (strict; stage-1 or
        stage-2 file, official or cad's), student <- MODEL.WEIGHTS (backbone initialisation).
        With --resume and a checkpoint in OUTPUT_DIR: both models, optimiser, scheduler, iteration."""
        if not self.cfg.SSL.TRAIN_SSL or (resume and self.checkpointer.has_checkpoint()):
            super().resume_or_load(resume=resume)
            return
        check_teacher_checkpoint(self.cfg)
        ensemble = self.checkpointer.model
        load_teacher(ensemble.modelTeacher, self.cfg)
        logger.info("Loaded the teacher from %s", self.cfg.SSL.TEACHER_CKPT)
        # The student starts from MODEL.WEIGHTS: a backbone initialisation (ImageNet R-50.pkl), a full
        # checkpoint, or "" (random initialisation, with the loader's warning).
        load_checkpoint(ensemble.modelStudent, self.cfg.MODEL.WEIGHTS, self.cfg, for_training=True)
        self.start_iter = 0
