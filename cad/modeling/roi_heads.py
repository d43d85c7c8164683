"""ROI heads for detectors trained on pseudo-masks: soft targets (CuVLER) and DropLoss (CutLER).

Registered components (select them in a config):

- `MODEL.ROI_HEADS.NAME: PseudoLabelROIHeads` (Mask/Faster R-CNN) or `PseudoLabelCascadeROIHeads`
  (Cascade Mask R-CNN): Detectron2's `StandardROIHeads` / `CascadeROIHeads` whose box predictors
  are `PseudoLabelFastRCNNOutputLayers`, and whose proposals carry the fields those losses need:
  `gt_scores` (the matched pseudo-object's score, at every cascade stage) and, with DropLoss,
  `image_gt_boxes` (every pseudo-box of the proposal's image).
- `MODEL.ROI_MASK_HEAD.NAME: PseudoLabelMaskRCNNConvUpsampleHead`: the mask loss weighted by score.

Switches: `MODEL.ROI_HEADS.SOFT_TARGETS`, `MODEL.ROI_HEADS.USE_DROPLOSS`,
`MODEL.ROI_HEADS.DROPLOSS_IOU_THRESH` (see `cad.config`). With both switches off the losses are
Detectron2's own.
"""
import logging
from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import cat, nonzero_tuple
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
)
from detectron2.modeling.roi_heads.fast_rcnn import _log_classification_stats
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from torch import nn

from cad.modeling.losses import (
    droploss_weights,
    soft_target_cross_entropy,
    weighted_box_regression_loss,
    weighted_mask_loss,
)

logger = logging.getLogger(__name__)


def _scores(instances: Instances) -> torch.Tensor:
    """(len(instances),) `gt_scores`, or ones when the field is absent (hard labels)."""
    if instances.has("gt_scores"):
        return instances.gt_scores
    return torch.ones(len(instances), device=instances.proposal_boxes.device)


class PseudoLabelFastRCNNOutputLayers(FastRCNNOutputLayers):
    """`FastRCNNOutputLayers` with soft targets and DropLoss in its losses.

    - Soft targets: softmax CE with target (s, 1 - s) on (class, background) for a proposal
      matched to a pseudo-object of score s, (0, 1) for background, meaned over all proposals;
      the box loss of each foreground proposal is multiplied by s and divided by the number of
      proposals (CuVLER `fast_rcnn.py`, `_soft_dense_box_regression_loss`).
    - DropLoss: the classification term of a proposal is multiplied by 0 when its predicted box
      has IoU <= thresh with every pseudo-box of its image, still meaned over all proposals
      (CutLER `_forward_box`). The box loss is not affected.

    Expects the proposal fields `gt_classes`, `gt_boxes` (if any GT), `gt_scores` (soft targets;
    ones if absent) and `image_gt_boxes` (R, G, 4) with DropLoss, as set by the ROI heads below.
    """

    @configurable
    def __init__(
        self, input_shape, *, soft_targets: bool = False, use_droploss: bool = False,
        droploss_iou_thresh: float = 0.01, **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        self.soft_targets = soft_targets
        self.use_droploss = use_droploss
        self.droploss_iou_thresh = droploss_iou_thresh

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(
            soft_targets=cfg.MODEL.ROI_HEADS.SOFT_TARGETS,
            use_droploss=cfg.MODEL.ROI_HEADS.USE_DROPLOSS,
            droploss_iou_thresh=cfg.MODEL.ROI_HEADS.DROPLOSS_IOU_THRESH,
        )
        return ret

    def losses(self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]) -> Dict:
        """`loss_cls` and `loss_box_reg` of one stage; Detectron2's when both switches are off."""
        if not (self.soft_targets or self.use_droploss):
            return super().losses(predictions, proposals)
        scores, proposal_deltas = predictions
        if not proposals:
            zero = scores.sum() * 0.0
            return {"loss_cls": zero, "loss_box_reg": zero + proposal_deltas.sum() * 0.0}
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        _log_classification_stats(scores, gt_classes)
        gt_scores = cat([_scores(p) for p in proposals], dim=0)
        cls_weights = self.droploss_weights(predictions, proposals) if self.use_droploss else None
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0)
        losses = {
            "loss_cls": soft_target_cross_entropy(
                scores, gt_classes, gt_scores if self.soft_targets else None, cls_weights
            ),
            "loss_box_reg": self.weighted_box_reg_loss(
                proposal_boxes, gt_boxes, proposal_deltas, gt_classes,
                gt_scores if self.soft_targets else torch.ones_like(gt_scores),
            ),
        }
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    @torch.no_grad()
    def droploss_weights(self, predictions, proposals: List[Instances]) -> torch.Tensor:
        """(R,) 0/1 DropLoss weights of this stage's proposals from its own predicted boxes."""
        if not all(p.has("image_gt_boxes") for p in proposals):
            raise ValueError(
                "DropLoss needs the proposal field 'image_gt_boxes': use MODEL.ROI_HEADS.NAME "
                "PseudoLabelROIHeads or PseudoLabelCascadeROIHeads"
            )
        pred_boxes = cat(self.predict_boxes_for_gt_classes(predictions, proposals), dim=0)
        weights = droploss_weights(
            pred_boxes, cat([p.image_gt_boxes for p in proposals], dim=0), self.droploss_iou_thresh
        )
        if weights.numel():
            get_event_storage().put_scalar("fast_rcnn/droploss_kept", weights.mean().item())
        return weights

    def weighted_box_reg_loss(
        self, proposal_boxes: torch.Tensor, gt_boxes: torch.Tensor, pred_deltas: torch.Tensor,
        gt_classes: torch.Tensor, weights: torch.Tensor,
    ) -> torch.Tensor:
        """Box loss of the foreground proposals, each weighted by `weights` (R,), divided by R."""
        box_dim = proposal_boxes.shape[1]
        fg_inds = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == box_dim:  # class-agnostic regression
            fg_pred_deltas = pred_deltas[fg_inds]
        else:
            fg_pred_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[fg_inds, gt_classes[fg_inds]]
        if self.box_reg_loss_type == "smooth_l1":
            pred = fg_pred_deltas
            target = self.box2box_transform.get_deltas(proposal_boxes[fg_inds], gt_boxes[fg_inds])
        else:
            pred = self.box2box_transform.apply_deltas(fg_pred_deltas, proposal_boxes[fg_inds])
            target = gt_boxes[fg_inds]
        return weighted_box_regression_loss(
            pred, target, weights[fg_inds], gt_classes.numel(), self.box_reg_loss_type, self.smooth_l1_beta
        )


@ROI_MASK_HEAD_REGISTRY.register()
class PseudoLabelMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """Mask head whose training loss weights each mask's BCE by its `gt_scores` (CuVLER
    `mask_rcnn_loss_weighted`: per-element weight, mean over all N·M·M elements).

    With `MODEL.ROI_HEADS.SOFT_TARGETS` off it is Detectron2's `MaskRCNNConvUpsampleHead`.
    """

    @configurable
    def __init__(self, input_shape, *, soft_targets: bool = False, **kwargs):
        super().__init__(input_shape, **kwargs)
        self.soft_targets = soft_targets

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["soft_targets"] = cfg.MODEL.ROI_HEADS.SOFT_TARGETS
        return ret

    def forward(self, x, instances: List[Instances]):
        if not (self.training and self.soft_targets):
            return super().forward(x, instances)
        logits = self.layers(x)
        return {"loss_mask": self.weighted_loss(logits, instances) * self.loss_weight}

    @staticmethod
    def weighted_loss(mask_logits: torch.Tensor, instances: List[Instances]) -> torch.Tensor:
        """Score-weighted mask loss.

        Args:
            mask_logits: (N, C, M, M), C = 1 (class-agnostic) or K, for the N foreground
                proposals of `instances` (fields `proposal_boxes`, `gt_masks`, `gt_classes`,
                `gt_scores`).
        """
        side = mask_logits.shape[-1]
        instances = [p for p in instances if len(p)]
        if not instances:
            return mask_logits.sum() * 0.0
        gt_masks = cat([p.gt_masks.crop_and_resize(p.proposal_boxes.tensor, side) for p in instances], dim=0)
        gt_masks = gt_masks.to(device=mask_logits.device, dtype=torch.float32)
        if mask_logits.shape[1] == 1:
            logits = mask_logits[:, 0]
        else:
            classes = cat([p.gt_classes for p in instances], dim=0)
            logits = mask_logits[torch.arange(len(classes), device=classes.device), classes]
        return weighted_mask_loss(logits, gt_masks, cat([_scores(p) for p in instances], dim=0))


class _PseudoLabelFieldsMixin:
    """Adds to sampled proposals the fields `PseudoLabelFastRCNNOutputLayers` reads."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        mask_head = ret.get("mask_head")
        if cfg.MODEL.ROI_HEADS.SOFT_TARGETS and mask_head is not None and not getattr(mask_head, "soft_targets", False):
            logger.warning(
                "MODEL.ROI_HEADS.SOFT_TARGETS is on but the mask head %s does not weight its loss by "
                "score; use ROI_MASK_HEAD.NAME PseudoLabelMaskRCNNConvUpsampleHead", type(mask_head).__name__,
            )
        return ret

    def _predictors(self) -> List[nn.Module]:
        return list(self.box_predictor) if isinstance(self.box_predictor, nn.ModuleList) else [self.box_predictor]

    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        for t in targets:  # hard labels when the mapper gave no scores
            if not t.has("gt_scores"):
                t.gt_scores = torch.ones(len(t), device=t.gt_boxes.device)
        proposals = super().label_and_sample_proposals(proposals, targets)
        for p in proposals:  # an image without pseudo-objects: all background, score unused
            if not p.has("gt_scores"):
                p.gt_scores = torch.zeros(len(p), device=p.proposal_boxes.device)
        return self._add_image_gt_boxes(proposals, targets)

    def _add_image_gt_boxes(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """With DropLoss, set `image_gt_boxes` (Ri, G, 4): the image's G pseudo-boxes, zero-padded
        to the batch's largest G (zero boxes have IoU 0, so they never keep a proposal)."""
        if not any(getattr(p, "use_droploss", False) for p in self._predictors()):
            return proposals
        num_gt = max(len(t) for t in targets)
        for p, t in zip(proposals, targets):
            boxes = t.gt_boxes.tensor.new_zeros((num_gt, 4))
            boxes[: len(t)] = t.gt_boxes.tensor
            p.image_gt_boxes = boxes[None].expand(len(p), num_gt, 4)
        return proposals


@ROI_HEADS_REGISTRY.register()
class PseudoLabelROIHeads(_PseudoLabelFieldsMixin, StandardROIHeads):
    """`StandardROIHeads` (Mask/Faster R-CNN) with soft targets and DropLoss (CutLER Mask R-CNN,
    LOST+CAD). Use `PseudoLabelMaskRCNNConvUpsampleHead` as mask head for score-weighted masks."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = PseudoLabelFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret


@ROI_HEADS_REGISTRY.register()
class PseudoLabelCascadeROIHeads(_PseudoLabelFieldsMixin, CascadeROIHeads):
    """`CascadeROIHeads` with soft targets and DropLoss at every stage (CuVLER/CutLER cascade).

    Stages >= 1 re-match the previous stage's boxes at their own IoU and take `gt_scores` from
    the GT each box matches (0 in an image without GT); CuVLER's release reads a missing
    `gt_weights` field here, which this fixes. DropLoss weights are recomputed per stage from
    that stage's predicted boxes.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictors"] = [
            PseudoLabelFastRCNNOutputLayers(cfg, head.output_shape, box2box_transform=stock.box2box_transform)
            for head, stock in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals: List[Instances], stage: int, targets: List[Instances]):
        proposals = super()._match_and_label_boxes(proposals, stage, targets)
        for p, t in zip(proposals, targets):
            if len(t):
                matched_idxs, _ = self.proposal_matchers[stage](pairwise_iou(t.gt_boxes, p.proposal_boxes))
                p.gt_scores = t.gt_scores[matched_idxs]
            else:
                p.gt_scores = torch.zeros(len(p), device=p.proposal_boxes.device)
        return self._add_image_gt_boxes(proposals, targets)
