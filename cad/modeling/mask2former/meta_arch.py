"""Mask2Former meta-architecture for instance segmentation (registered in META_ARCH_REGISTRY)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, ImageList, Instances
from torch import nn

from cad.modeling.mask2former.criterion import SetCriterion
from cad.modeling.mask2former.matcher import HungarianMatcher
from cad.modeling.mask2former.pixel_decoder import PIXEL_DECODER_REGISTRY
from cad.modeling.mask2former.transformer_decoder import MultiScaleMaskedTransformerDecoder

# (loss-name suffix, weight, number of images): consecutive slices of a training batch.
LossGroup = Tuple[str, float, int]


def instance_inference(
    mask_cls: torch.Tensor, mask_pred: torch.Tensor, num_classes: int, topk: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k (query, class) pairs of one image (Mask2Former's instance inference, no NMS).

    mask_cls (Q, K+1) logits; mask_pred (Q, H, W) logits. k = min(topk, Q*K) (the reference
    crashes when Q*K < topk). Score = class prob × mean mask prob inside the binary mask
    (logit > 0). Returns scores (k,), classes (k,) int64, masks (k, H, W) bool.
    """
    q = mask_cls.shape[0]
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes, device=mask_cls.device).repeat(q, 1).flatten()
    k = min(topk, scores.numel())
    scores, idx = scores.flatten().topk(k, sorted=False)
    classes = labels[idx]
    logits = mask_pred[torch.div(idx, num_classes, rounding_mode="floor")]
    masks = logits > 0
    mask_scores = (logits.sigmoid().flatten(1) * masks.flatten(1)).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    return scores * mask_scores, classes, masks


class MaskFormerHead(nn.Module):
    """`pixel_decoder` + `predictor` (the official `MaskFormerHead` with
    TRANSFORMER_IN_FEATURE "multi_scale_pixel_decoder"): backbone features -> raw outputs
    pred_logits (B, Q, K+1), pred_masks (B, Q, H/4, W/4), aux_outputs.

    Loading: the official `MaskFormerHead._load_from_state_dict` (mask2former/modeling/meta_arch/
    mask_former_head.py) renames every `sem_seg_head.*` key outside `sem_seg_head.predictor` to
    `sem_seg_head.pixel_decoder.*` when the state dict carries no version for `sem_seg_head`
    (a conversion of MaskFormer-v1 files); a Mask2Former file stripped of its `_metadata` thus
    loads with the whole pixel decoder missing there. Files written by Detectron2's checkpointer
    (`torch.save` of `model.state_dict()`, which keeps `_metadata`) carry version 2 and load
    unchanged. cad applies no rename, so official files load with or without metadata, and
    declares `_version = 2` so the files cad saves load unchanged in the official code.
    """

    _version = 2

    def __init__(self, pixel_decoder: nn.Module, predictor: nn.Module, num_classes: int):
        super().__init__()
        self.pixel_decoder, self.predictor, self.num_classes = pixel_decoder, predictor, num_classes

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict:
        mask_features, multi_scale = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale, mask_features)


@META_ARCH_REGISTRY.register()
class Mask2Former(nn.Module):
    """Backbone + `sem_seg_head` (pixel decoder + masked-attention transformer decoder), trained
    with Hungarian matching and point-sampled mask losses; instance-segmentation inference.

    Module names are the official `MaskFormer`'s (mask2former/maskformer_model.py): `backbone`,
    `sem_seg_head.pixel_decoder`, `sem_seg_head.predictor`, `criterion` (buffer `empty_weight`).
    Deliberate differences at inference: predicted boxes are the masks' bounding boxes (the
    official ones are all zero), masks are bool, and k = min(TEST.DETECTIONS_PER_IMAGE, Q*K).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: MaskFormerHead,
        criterion: SetCriterion,
        weight_dict: Dict[str, float],
        num_classes: int,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        test_topk_per_image: int,
    ):
        super().__init__()
        self.backbone, self.sem_seg_head = backbone, sem_seg_head
        self.criterion, self.weight_dict = criterion, weight_dict
        self.num_classes = num_classes
        self.size_divisibility = max(size_divisibility, backbone.size_divisibility)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.test_topk_per_image = test_topk_per_image

    @classmethod
    def from_config(cls, cfg):
        mf = cfg.MODEL.MASK_FORMER
        backbone = build_backbone(cfg)
        pixel_decoder = PIXEL_DECODER_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME)(cfg, backbone.output_shape())
        predictor = MultiScaleMaskedTransformerDecoder(cfg, in_channels=cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM)
        sem_seg_head = MaskFormerHead(pixel_decoder, predictor, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        matcher = HungarianMatcher(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.TRAIN_NUM_POINTS)
        base = {"loss_ce": mf.CLASS_WEIGHT, "loss_mask": mf.MASK_WEIGHT, "loss_dice": mf.DICE_WEIGHT}
        weight_dict = dict(base)
        if mf.DEEP_SUPERVISION:
            for i in range(mf.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        criterion = SetCriterion(
            cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            matcher,
            eos_coef=mf.NO_OBJECT_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
            oversample_ratio=mf.OVERSAMPLE_RATIO,
            importance_sample_ratio=mf.IMPORTANCE_SAMPLE_RATIO,
            deep_supervision=mf.DEEP_SUPERVISION,
        )
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "weight_dict": weight_dict,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise each `image` (C, H, W) and pad the batch to `size_divisibility`."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def predict(self, images: ImageList) -> Dict:
        """Raw outputs: pred_logits (B, Q, K+1), pred_masks (B, Q, H/4, W/4), aux_outputs."""
        return self.sem_seg_head(self.backbone(images.tensor))

    def prepare_targets(self, instances: List[Instances], images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Per image `labels` (T,) and `masks` (T, H_pad, W_pad) zero-padded to the batch canvas."""
        h_pad, w_pad = images.tensor.shape[-2:]
        targets = []
        for inst in instances:
            inst = inst.to(self.device)
            masks = inst.gt_masks
            masks = masks.tensor if isinstance(masks, BitMasks) else torch.as_tensor(masks)
            padded = torch.zeros((len(masks), h_pad, w_pad), dtype=masks.dtype, device=self.device)
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": inst.gt_classes, "masks": padded})
        return targets

    def forward(self, batched_inputs: List[Dict], loss_groups: Optional[Sequence[LossGroup]] = None):
        """Training: weighted losses from each input's `instances`; `loss_groups` splits the
        batch into consecutive slices whose losses get a suffix and a weight (one forward for
        labeled and unlabeled images). Inference: per image {"instances": Instances}."""
        images = self.preprocess(batched_inputs)
        outputs = self.predict(images)
        if self.training:
            targets = self.prepare_targets([x["instances"] for x in batched_inputs], images)
            return self.losses(outputs, targets, loss_groups or [("", 1.0, len(batched_inputs))])
        return self.postprocess(outputs, batched_inputs, images)

    def losses(self, outputs: Dict, targets: List[Dict], loss_groups: Sequence[LossGroup]) -> Dict[str, torch.Tensor]:
        if sum(n for _, _, n in loss_groups) != len(targets):
            raise ValueError("loss_groups must cover the batch exactly")
        losses, start = {}, 0
        for suffix, weight, n in loss_groups:
            sl = slice(start, start + n)
            start += n
            group = self.criterion(_slice_outputs(outputs, sl), targets[sl])
            for k, v in group.items():
                if k in self.weight_dict:
                    losses[k + suffix] = v * self.weight_dict[k] * weight
        return losses

    def postprocess(self, outputs: Dict, batched_inputs: List[Dict], images: ImageList) -> List[Dict]:
        mask_preds = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        results = []
        for mask_cls, mask_pred, inp, size in zip(outputs["pred_logits"], mask_preds, batched_inputs, images.image_sizes):
            height, width = inp.get("height", size[0]), inp.get("width", size[1])
            results.append({"instances": self.instances(mask_cls, sem_seg_postprocess(mask_pred, size, height, width))})
        return results

    def instances(self, mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> Instances:
        """Instances of one image from class logits (Q, K+1) and mask logits (Q, H, W) at the
        output size (H, W): `instance_inference`, boxes = the masks' bounding boxes."""
        scores, classes, masks = instance_inference(mask_cls, mask_pred, self.num_classes, self.test_topk_per_image)
        inst = Instances(tuple(mask_pred.shape[-2:]))
        inst.pred_masks = masks
        inst.pred_boxes = BitMasks(masks).get_bounding_boxes()
        inst.scores = scores
        inst.pred_classes = classes
        return inst


def _slice_outputs(outputs: Dict, sl: slice) -> Dict:
    out = {"pred_logits": outputs["pred_logits"][sl], "pred_masks": outputs["pred_masks"][sl]}
    if "aux_outputs" in outputs:
        out["aux_outputs"] = [_slice_outputs(a, sl) for a in outputs["aux_outputs"]]
    return out
