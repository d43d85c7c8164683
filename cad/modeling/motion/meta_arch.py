"""Registered meta-architectures `DIOD` and `XMOD` (META_ARCH_REGISTRY).

Each holds its student network(s) and an EMA teacher per modality, so one checkpoint restores
both. Until `start_distillation()` (called by cad.distillation.motion's trainer at
CAD.MOTION.TEACHER_START_ITER) the model trains on motion masks alone (burn-in); afterwards the
teachers filter the motion masks (mean teacher-fg >= 0.9, weight 1 + conf) and their pseudo-
labels add the static objects.

Inputs: list of dicts from `cad.data.motion.MotionClipMapper` (image uint8 [T, 3, H, W],
motion_masks int [T, H, W] for training, range float [T, 4, H, W] for XMOD). Inference output per
clip: {"masks": float [T, K, H/4, W/4], "fg": float [T, H/4, W/4]}.
"""
import copy
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from cad.modeling.motion.augment import color_augment, point_augment
from cad.modeling.motion.losses import fg_losses, mask_loss, masked_mse, resize_ids
from cad.modeling.motion.networks import SlotVideoNet
from cad.modeling.motion.pseudo_labels import late_fusion, teacher_pseudo_labels


class _TeacherStudent(nn.Module):
    """Shared parts: networks per modality (student + frozen EMA teacher), stage flag, losses."""

    modalities: Tuple[str, ...] = ("2d",)

    def __init__(self, cfg):
        super().__init__()
        m = cfg.CAD.MOTION
        self.m = m
        channels = {"2d": 3, "3d": 4}
        self.students = nn.ModuleDict({
            k: SlotVideoNet(
                channels[k], width=m.ENCODER_WIDTH, num_slots=m.NUM_SLOTS, dim=m.SLOT_DIM, mlp_hidden=m.MLP_HIDDEN,
                decoder_hidden=m.DECODER_DIM, slot_iters=m.SLOT_ITERS, norm=m.ENCODER_NORM,
            )
            for k in self.modalities
        })
        self.teachers = copy.deepcopy(self.students)
        for p in self.teachers.parameters():
            p.requires_grad_(False)
        self.register_buffer("distilling", torch.zeros((), dtype=torch.bool))
        self.to(torch.device(cfg.MODEL.DEVICE))

    @property
    def device(self) -> torch.device:
        return self.distilling.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.teachers.eval()  # teachers use running BN statistics (DIOD leaves them in train mode)
        return self

    @torch.no_grad()
    def start_distillation(self) -> None:
        """Teacher <- copy of the student (end of burn-in)."""
        self.teachers.load_state_dict(self.students.state_dict())
        self.distilling.fill_(True)

    def eval_net(self, modality: str) -> nn.Module:
        return (self.teachers if self.m.EVAL_NET == "teacher" else self.students)[modality]

    def _images(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """float [B, T, 3, H, W] in [0, 1]."""
        return torch.stack([d["image"] for d in batched_inputs]).to(self.device).float() / 255

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.m.PIXEL_MEAN) / self.m.PIXEL_STD

    def _losses(self, modality: str, pred: Dict, target: torch.Tensor, motion: torch.Tensor,
                motion_conf: Optional[torch.Tensor], teacher: Optional[Dict], recon) -> Dict[str, torch.Tensor]:
        """Losses of one student: recon, motion-mask WBCE (filtered by `motion_conf` when given), fg
        NLL/reg, and the pseudo-label loss of its own teacher's prediction `teacher`."""
        m = self.m
        ids = resize_ids(motion, pred["masks"].shape[-2:])
        l_mask, union = mask_loss(pred["masks"], ids, motion_conf, m.CONF_THRESH)
        nll, reg = fg_losses(pred["fg"], union)
        out = {"loss_recon": recon(pred["recon"], target), "loss_mask": m.MASK_WEIGHT * l_mask,
               "loss_nll": m.NLL_WEIGHT * nll, "loss_reg": m.REG_WEIGHT * reg}
        if teacher is not None:
            pseudo = teacher_pseudo_labels(teacher["masks"], m.MIN_PSEUDO_AREA)
            out["loss_teacher"] = m.TEACHER_WEIGHT * mask_loss(pred["masks"], pseudo, teacher["fg"], m.CONF_THRESH)[0]
        suffix = "" if len(self.modalities) == 1 else f"_{modality}"
        return {k + suffix: v for k, v in out.items()}

    def _student_image(self, images: torch.Tensor) -> torch.Tensor:
        m = self.m
        return self._normalise(color_augment(images, m.COLOR_JITTER, m.COLOR_JITTER_PROB, m.GRAYSCALE_PROB, m.SOLARIZE_PROB))


@META_ARCH_REGISTRY.register()
class DIOD(_TeacherStudent):
    """DIOD (CVPR'24): slot attention on RGB clips, motion-guided burn-in, then self-distillation."""

    modalities = ("2d",)

    def forward(self, batched_inputs: List[Dict]):
        images = self._images(batched_inputs)
        if not self.training:
            pred = self.eval_net("2d")(self._normalise(images))
            return [{"masks": pred["masks"][i], "fg": pred["fg"][i]} for i in range(len(images))]
        motion = torch.stack([d["motion_masks"] for d in batched_inputs]).to(self.device)
        x = self._student_image(images)
        pred = self.students["2d"](x)
        teacher = None
        if bool(self.distilling):
            with torch.no_grad():
                teacher = self.teachers["2d"](self._normalise(images))
        recon = lambda r, t: self.m.RECON_WEIGHT * nn.functional.mse_loss(r, t)  # noqa: E731
        return self._losses("2d", pred, x, motion, teacher["fg"] if teacher else None, teacher, recon)


@META_ARCH_REGISTRY.register()
class XMOD(_TeacherStudent):
    """xMOD (CVPR'25): DIOD on RGB plus a second network on the 4-channel range image; with
    teachers, each modality's motion masks are filtered by the *other* modality's teacher fg and
    its pseudo-labels come from its own teacher (as released); inference fuses both (IoU > 0.1)."""

    modalities = ("2d", "3d")

    def _ranges(self, batched_inputs: List[Dict]) -> torch.Tensor:
        return torch.stack([d["range"] for d in batched_inputs]).to(self.device).float()

    def forward(self, batched_inputs: List[Dict]):
        images, ranges = self._images(batched_inputs), self._ranges(batched_inputs)
        if not self.training:
            p2 = self.eval_net("2d")(self._normalise(images))
            p3 = self.eval_net("3d")(ranges)
            return [self._fused(p2, p3, i) for i in range(len(images))]
        m = self.m
        motion = torch.stack([d["motion_masks"] for d in batched_inputs]).to(self.device)
        x2, x3 = self._student_image(images), point_augment(ranges, m.POINT_DROP_PROB, m.POINT_JITTER_PROB)
        p2, p3 = self.students["2d"](x2), self.students["3d"](x3)
        t2 = t3 = None
        if bool(self.distilling):
            with torch.no_grad():
                t2, t3 = self.teachers["2d"](self._normalise(images)), self.teachers["3d"](ranges)
        mse = lambda r, t: m.RECON_WEIGHT * nn.functional.mse_loss(r, t)  # noqa: E731
        rec3 = lambda r, t: m.RECON_WEIGHT * m.RECON_3D_WEIGHT * masked_mse(r, t)  # noqa: E731
        losses = self._losses("2d", p2, x2, motion, t3["fg"] if t3 else None, t2, mse)
        losses.update(self._losses("3d", p3, x3, motion, t2["fg"] if t2 else None, t3, rec3))
        return losses

    def _fused(self, p2: Dict, p3: Dict, i: int) -> Dict[str, torch.Tensor]:
        which = self.m.XMOD_EVAL_OUTPUT
        if which == "2d":
            return {"masks": p2["masks"][i], "fg": p2["fg"][i]}
        if which == "3d":
            return {"masks": p3["masks"][i], "fg": p3["fg"][i]}
        masks = torch.stack([late_fusion(a, b, self.m.FUSION_IOU) for a, b in zip(p2["masks"][i], p3["masks"][i])])
        return {"masks": masks, "fg": 1 - masks[:, -1]}
