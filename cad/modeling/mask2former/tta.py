"""Test-time augmentation of Mask2Former instance segmentation (`TEST.AUG`).

The official trainer (GuidedDistillation train_net.py, `--eval-only` with TEST.AUG.ENABLED)
wraps the model in Mask2Former's `SemanticSegmentorWithTTA`: Detectron2's `DatasetMapperTTA`
views (shortest edge = each of TEST.AUG.MIN_SIZES, capped at TEST.AUG.MAX_SIZE, each also flipped
when TEST.AUG.FLIP), predictions flipped back and averaged at the original size. It averages the
`sem_seg` output, which an instance-only model does not produce (its instance configs have
SEMANTIC_ON False, so the official run stops with KeyError 'sem_seg'). cad averages what the
instance head predicts per query over the same views, the class probabilities (Q, K+1) and the
mask probabilities (Q, H, W) at the original size, then runs the usual instance inference on the
averages (the semantic output the official wrapper averages is a sum over queries of their
products). With a single view this is exactly the model's own inference.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.modeling import DatasetMapperTTA
from detectron2.modeling.postprocessing import sem_seg_postprocess
from fvcore.transforms import HFlipTransform
from torch import nn

from cad.distillation.ema import unwrap


class Mask2FormerWithTTA(nn.Module):
    """`model` (a `Mask2Former`) evaluated on the TEST.AUG views of each image."""

    def __init__(self, cfg, model: nn.Module, tta_mapper=None):
        super().__init__()
        self.model = unwrap(model)
        self.tta_mapper = tta_mapper or DatasetMapperTTA(cfg)

    @torch.no_grad()
    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        return [{"instances": self._inference_one(x)} for x in batched_inputs]

    def _inference_one(self, inp: Dict):
        height, width = inp["height"], inp["width"]
        class_probs, mask_probs, views = 0.0, 0.0, self.tta_mapper(inp)
        for view in views:
            flipped = any(isinstance(t, HFlipTransform) for t in view.pop("transforms").transforms)
            images = self.model.preprocess([view])
            outputs = self.model.predict(images)
            masks = F.interpolate(outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
            masks = sem_seg_postprocess(masks[0], images.image_sizes[0], height, width)
            class_probs = class_probs + outputs["pred_logits"][0].softmax(-1)
            mask_probs = mask_probs + (masks.flip(-1) if flipped else masks).sigmoid()
        # back to logits for the model's instance inference (softmax(log p) = p; logit(p) > 0 iff p > 0.5)
        return self.model.instances((class_probs / len(views)).log(), torch.logit(mask_probs / len(views)))
