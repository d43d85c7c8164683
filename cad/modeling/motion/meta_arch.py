"""Registered meta-architectures `DIOD`, `DIOD3D` and `XMOD` (META_ARCH_REGISTRY), Detectron2 `@configurable`.

Each holds its student network(s) and an EMA teacher per modality, so one checkpoint restores
both. Until `start_distillation()` (called by cad.distillation.motion's trainer at
CAD.MOTION.TEACHER_START_ITER) the model trains on motion masks alone (burn-in; DIOD trainPD_ts.py
before `--start_teacher`); afterwards the teachers filter the motion masks (mean teacher-fg >= 0.9,
weight 1 + conf: trainPD_ts.computeWBCE_TS) and their pseudo-labels add the static objects.

Inputs: list of dicts from `cad.data.motion.MotionClipMapper` (image uint8 [T, 3, H, W] RGB,
motion_masks int [T, H, W] for training, range float [T, 4, H, W] for DIOD3D / XMOD). The networks see the
frames in BGR order: DIOD and xMOD read frames with cv2 and never convert them (datasetPD.py,
datasetPDEval.py, xMOD dataloaders).
Inference output per clip: {"masks": float [T, K, H/4, W/4], "fg": float [T, H/4, W/4]}.
"""
import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from cad.modeling.motion.augment import color_augment, point_augment
from cad.modeling.motion.losses import fg_losses, mask_loss, masked_mse, resize_ids
from cad.backbones.d2_backbone import vit_from_cfg
from cad.modeling.motion.networks import SlotVideoNet, ViTEncoder, bn_batch_statistics
from cad.modeling.motion.pseudo_labels import late_fusion, teacher_pseudo_labels

CHANNELS = {"2d": 3, "3d": 4}


def build_slot_network(cfg, modality: str) -> SlotVideoNet:
    """One modality's `SlotVideoNet` from CAD.MOTION (see cad.config for each key). With
    CAD.MOTION.ENCODER "vit" the RGB network encodes frames with the CAD.VIT ViT (DIOD_DINOv2)."""
    m = cfg.CAD.MOTION
    encoder = None
    if m.ENCODER == "vit" and modality == "2d":
        encoder = ViTEncoder(vit_from_cfg(cfg, cfg.CAD.VIT.ARCH), m.VIT_LAYERS, cfg.CAD.VIT.FREEZE)
    return SlotVideoNet(
        CHANNELS[modality], width=m.ENCODER_WIDTH, num_slots=m.NUM_SLOTS, dim=m.SLOT_DIM, mlp_hidden=m.MLP_HIDDEN,
        decoder_hidden=m.DECODER_DIM, slot_iters=m.SLOT_ITERS, norm=m.ENCODER_NORM, input_size=tuple(m.INPUT_SIZE),
        encoder=encoder,
    )


class _TeacherStudent(nn.Module):
    """Shared parts: networks per modality (student + frozen EMA teacher), stage flag, losses.

    networks: modality ("2d" / "3d") -> student network; the teachers are deep copies.
    loss_weights: recon, mask, nll, reg, teacher. augment: jitter (b, c, s, h), jitter_prob,
    gray_prob, solarize_prob (student colour augmentation). eval_bn_batch_stats /
    teacher_bn_batch_stats: BatchNorm with batch statistics in evaluation / in the teacher's
    training forward (DIOD: both; xMOD evaluates in eval() mode, its teachers are never eval()).
    """

    modalities: Tuple[str, ...] = ("2d",)

    @configurable
    def __init__(self, *, networks: Dict[str, nn.Module], pixel_mean: Sequence[float] = (0.5, 0.5, 0.5), pixel_std: Sequence[float] = (0.5, 0.5, 0.5),
                 augment: Dict[str, Any], loss_weights: Dict[str, float], conf_thresh: float = 0.9,
                 min_pseudo_area: int = 10, eval_net: str = "student", eval_bn_batch_stats: bool = True,
                 teacher_bn_batch_stats: bool = True, device: str = "cpu"):
        super().__init__()
        if set(networks) != set(self.modalities):
            raise ValueError(f"{type(self).__name__} needs networks for {self.modalities}, got {sorted(networks)}")
        self.students = nn.ModuleDict({k: networks[k] for k in self.modalities})
        self.teachers = copy.deepcopy(self.students)
        for p in self.teachers.parameters():
            p.requires_grad_(False)
        self.register_buffer("distilling", torch.zeros((), dtype=torch.bool))
        self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)
        self.augment, self.loss_weights = dict(augment), dict(loss_weights)
        self.conf_thresh, self.min_pseudo_area, self.eval_net_name = conf_thresh, min_pseudo_area, eval_net
        self.eval_bn_batch_stats, self.teacher_bn_batch_stats = eval_bn_batch_stats, teacher_bn_batch_stats
        self.to(torch.device(device))

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        m = cfg.CAD.MOTION
        return {
            "networks": {k: build_slot_network(cfg, k) for k in cls.modalities},
            "pixel_mean": m.PIXEL_MEAN, "pixel_std": m.PIXEL_STD,
            "augment": {"jitter": tuple(m.COLOR_JITTER), "jitter_prob": m.COLOR_JITTER_PROB, "gray_prob": m.GRAYSCALE_PROB,
                        "solarize_prob": m.SOLARIZE_PROB},
            "loss_weights": {"recon": m.RECON_WEIGHT, "mask": m.MASK_WEIGHT, "nll": m.NLL_WEIGHT, "reg": m.REG_WEIGHT,
                             "teacher": m.TEACHER_WEIGHT},
            "conf_thresh": m.CONF_THRESH, "min_pseudo_area": m.MIN_PSEUDO_AREA, "eval_net": m.EVAL_NET,
            "eval_bn_batch_stats": m.EVAL_BN_STATS == "batch", "teacher_bn_batch_stats": m.TEACHER_BN_STATS == "batch",
            "device": cfg.MODEL.DEVICE,
        }

    @property
    def device(self) -> torch.device:
        return self.distilling.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.teachers.eval()  # no BN statistics updates; batch statistics via `teacher_bn_batch_stats`
        return self

    @torch.no_grad()
    def start_distillation(self) -> None:
        """Teacher <- copy of the student (end of burn-in)."""
        self.teachers.load_state_dict(self.students.state_dict())
        self.distilling.fill_(True)

    def _eval_forward(self, modality: str, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        net = (self.teachers if self.eval_net_name == "teacher" else self.students)[modality]
        with bn_batch_statistics(net, self.eval_bn_batch_stats):
            return net(x)

    @torch.no_grad()
    def _teacher_forward(self, modality: str, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        net = self.teachers[modality]
        with bn_batch_statistics(net, self.teacher_bn_batch_stats):
            return net(x)

    def _images(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """float [B, T, 3, H, W] in [0, 1] in BGR order (the mapper's RGB frames flipped)."""
        images = torch.stack([d["image"] for d in batched_inputs]).to(self.device).float() / 255
        return images.flip(2)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] in [0, 1] -> (x - mean) / std per channel (torchaug VideoNormalize)."""
        mean, std = (x.new_tensor(v).view(-1, 1, 1) for v in (self.pixel_mean, self.pixel_std))
        return (x - mean) / std

    def _losses(self, modality: str, pred: Dict, target: torch.Tensor, motion: torch.Tensor,
                motion_conf: Optional[torch.Tensor], teacher: Optional[Dict], recon) -> Dict[str, torch.Tensor]:
        """Losses of one student: recon, motion-mask WBCE (filtered by `motion_conf` when given), fg
        NLL/reg, and the pseudo-label loss of its own teacher's prediction `teacher`."""
        w = self.loss_weights
        ids = resize_ids(motion, pred["masks"].shape[-2:])
        l_mask, union = mask_loss(pred["masks"], ids, motion_conf, self.conf_thresh)
        nll, reg = fg_losses(pred["fg"], union)
        out = {"loss_recon": recon(pred["recon"], target), "loss_mask": w["mask"] * l_mask,
               "loss_nll": w["nll"] * nll, "loss_reg": w["reg"] * reg}
        if teacher is not None:
            pseudo = teacher_pseudo_labels(teacher["masks"], self.min_pseudo_area)
            out["loss_teacher"] = w["teacher"] * mask_loss(pred["masks"], pseudo, teacher["fg"], self.conf_thresh)[0]
        suffix = "" if len(self.modalities) == 1 else f"_{modality}"
        return {k + suffix: v for k, v in out.items()}

    def _student_image(self, images: torch.Tensor) -> torch.Tensor:
        """Colour augmentation on the frames in the networks' channel order (DIOD applies torchaug's
        transforms to the BGR tensors), then normalisation."""
        a = self.augment
        return self._normalise(color_augment(images, a["jitter"], a["jitter_prob"], a["gray_prob"], a["solarize_prob"]))


@META_ARCH_REGISTRY.register()
class DIOD(_TeacherStudent):
    """DIOD (CVPR'24): slot attention on video clips, motion-guided burn-in, then self-distillation."""

    modalities = ("2d",)

    def forward(self, batched_inputs: List[Dict]):
        images = self._images(batched_inputs)
        if not self.training:
            pred = self._eval_forward("2d", self._normalise(images))
            return [{"masks": pred["masks"][i], "fg": pred["fg"][i]} for i in range(len(images))]
        motion = torch.stack([d["motion_masks"] for d in batched_inputs]).to(self.device)
        x = self._student_image(images)
        pred = self.students["2d"](x)
        teacher = self._teacher_forward("2d", self._normalise(images)) if bool(self.distilling) else None
        recon = lambda r, t: self.loss_weights["recon"] * nn.functional.mse_loss(r, t)  # noqa: E731
        return self._losses("2d", pred, x, motion, teacher["fg"] if teacher else None, teacher, recon)


class _WithRange(_TeacherStudent):
    """Models with the 3D network: the range image input and its student augmentation (xMOD
    transforms_3d: point drop, x/y/z jitter) and the masked 3D reconstruction loss."""

    @configurable
    def __init__(self, *, point_drop_prob: float = 0.4, point_jitter_prob: float = 0.4, recon_3d_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.point_drop_prob, self.point_jitter_prob, self.recon_3d_weight = point_drop_prob, point_jitter_prob, recon_3d_weight

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        m = cfg.CAD.MOTION
        return {**super().from_config(cfg), "point_drop_prob": m.POINT_DROP_PROB, "point_jitter_prob": m.POINT_JITTER_PROB,
                "recon_3d_weight": m.RECON_3D_WEIGHT}

    def _ranges(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """float [B, T, 4, H, W] (0 = no point)."""
        return torch.stack([d["range"] for d in batched_inputs]).to(self.device).float()

    def _student_range(self, ranges: torch.Tensor) -> torch.Tensor:
        return point_augment(ranges, self.point_drop_prob, self.point_jitter_prob)

    def _recon_3d(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """xMOD train/losses.py: weight_recon * MSE over the points of the student's own input."""
        return self.loss_weights["recon"] * self.recon_3d_weight * masked_mse(recon, target)


@META_ARCH_REGISTRY.register()
class DIOD3D(_WithRange):
    """xMOD's DIOD-3D: DIOD's slot network on the 4-channel range image alone (xMOD train/train.py
    modes 3d_burn_in and 3d_ts; steps 1 and 2 of xMOD, whose result initialises the 3D network of
    `XMOD` through CAD.MOTION.WEIGHTS_3D). Burn-in on the 2D motion masks; with its EMA teacher, the
    teacher's pseudo-labels (filtered by the teacher's fg) are added while the motion-mask loss keeps
    the burn-in weighting, unfiltered: xMOD's compute_loss filters a modality's motion masks with the
    *other* modality's teacher, and 3d_ts has none. Evaluation needs no RGB network (xMOD
    eval/main_evaluation.py --evaluation_mode 3d)."""

    modalities = ("3d",)

    def forward(self, batched_inputs: List[Dict]):
        ranges = self._ranges(batched_inputs)
        if not self.training:
            pred = self._eval_forward("3d", ranges)
            return [{"masks": pred["masks"][i], "fg": pred["fg"][i]} for i in range(len(ranges))]
        motion = torch.stack([d["motion_masks"] for d in batched_inputs]).to(self.device)
        x = self._student_range(ranges)
        pred = self.students["3d"](x)
        teacher = self._teacher_forward("3d", ranges) if bool(self.distilling) else None
        return self._losses("3d", pred, x, motion, None, teacher, self._recon_3d)


@META_ARCH_REGISTRY.register()
class XMOD(_WithRange):
    """xMOD (CVPR'25): DIOD on RGB plus a second network on the 4-channel range image; with
    teachers, each modality's motion masks are filtered by the *other* modality's teacher fg and
    its pseudo-labels come from its own teacher (xMOD train/losses.compute_loss, as released);
    inference fuses both (eval/merging_strategies, IoU > 0.1)."""

    modalities = ("2d", "3d")

    @configurable
    def __init__(self, *, fusion_iou: float = 0.1, eval_output: str = "fused", **kwargs):
        super().__init__(**kwargs)
        self.fusion_iou, self.eval_output = fusion_iou, eval_output

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        m = cfg.CAD.MOTION
        return {**super().from_config(cfg), "fusion_iou": m.FUSION_IOU, "eval_output": m.XMOD_EVAL_OUTPUT}

    def forward(self, batched_inputs: List[Dict]):
        images, ranges = self._images(batched_inputs), self._ranges(batched_inputs)
        if not self.training:
            p2 = self._eval_forward("2d", self._normalise(images))
            p3 = self._eval_forward("3d", ranges)
            return [self._fused(p2, p3, i) for i in range(len(images))]
        motion = torch.stack([d["motion_masks"] for d in batched_inputs]).to(self.device)
        x2, x3 = self._student_image(images), self._student_range(ranges)
        p2, p3 = self.students["2d"](x2), self.students["3d"](x3)
        t2 = t3 = None
        if bool(self.distilling):
            t2, t3 = self._teacher_forward("2d", self._normalise(images)), self._teacher_forward("3d", ranges)
        w = self.loss_weights["recon"]
        mse = lambda r, t: w * nn.functional.mse_loss(r, t)  # noqa: E731
        losses = self._losses("2d", p2, x2, motion, t3["fg"] if t3 else None, t2, mse)
        losses.update(self._losses("3d", p3, x3, motion, t2["fg"] if t2 else None, t3, self._recon_3d))
        return losses

    def _fused(self, p2: Dict, p3: Dict, i: int) -> Dict[str, torch.Tensor]:
        if self.eval_output == "2d":
            return {"masks": p2["masks"][i], "fg": p2["fg"][i]}
        if self.eval_output == "3d":
            return {"masks": p3["masks"][i], "fg": p3["fg"][i]}
        masks = torch.stack([late_fusion(a, b, self.fusion_iou) for a, b in zip(p2["masks"][i], p3["masks"][i])])
        return {"masks": masks, "fg": 1 - masks[:, -1]}


# Meta-architectures whose inputs include the range image (the data mapper's `with_range`).
RANGE_ARCHS = ("XMOD", "DIOD3D")
