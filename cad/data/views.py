"""Mappers for Mask2Former training: instance masks (labeled) and weak/strong views (unlabeled).

The strong view is the weak view with photometric augmentations only (Guided Distillation:
colour jitter, grayscale, Gaussian blur), so both views share the same geometry.
"""
import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image, ImageFilter
from torchvision import transforms as tvt

from cad.data.mapper import CadDatasetMapper, is_readable_image, skip_unreadable


def build_mask2former_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """`INPUT.MASK2FORMER_AUGMENTATION`: "lsj" = flip, ResizeScale(MIN_SCALE..MAX_SCALE of
    IMAGE_SIZE), FixedSizeCrop(IMAGE_SIZE) (Mask2Former's COCO LSJ); "mask_former_instance" =
    ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING), RandomCrop(INPUT.CROP)
    if enabled, SSD colour distortion if INPUT.COLOR_AUG_SSD, flip (the official
    MaskFormerInstanceDatasetMapper and MaskFormerImageDatasetMapper, Cityscapes); "resize_flip" =
    Detectron2's ResizeShortestEdge (+ flip in training). Inference always uses the latter."""
    kind = cfg.INPUT.MASK2FORMER_AUGMENTATION
    if kind not in ("lsj", "mask_former_instance", "resize_flip"):
        raise ValueError(f"INPUT.MASK2FORMER_AUGMENTATION must be 'lsj', 'mask_former_instance' or 'resize_flip', got {kind!r}")
    if is_train and kind == "lsj":
        size = cfg.INPUT.IMAGE_SIZE
        return [
            T.RandomFlip(horizontal=True),
            T.ResizeScale(cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, size, size),
            T.FixedSizeCrop(crop_size=(size, size)),
        ]
    if is_train and kind == "mask_former_instance":
        from detectron2.projects.point_rend import ColorAugSSDTransform

        augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
        if cfg.INPUT.CROP.ENABLED:
            augs.append(T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        if cfg.INPUT.COLOR_AUG_SSD:
            augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
        return augs + [T.RandomFlip()]
    return utils.build_augmentation(cfg, is_train)


class Mask2FormerInstanceMapper(CadDatasetMapper):
    """`CadDatasetMapper` with Mask2Former's augmentations; instances carry `gt_classes` and
    bitmask `gt_masks` (boxes recomputed from the masks, so cropped-away instances are dropped)."""

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_mask2former_augmentation(cfg, is_train)
        ret["use_instance_mask"] = True
        ret["instance_mask_format"] = "bitmask"
        ret["recompute_boxes"] = is_train
        return ret


class GaussianBlurPIL:
    """PIL Gaussian blur with sigma ~ U[sigma_min, sigma_max] (torch RNG)."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)):
        self.sigma = tuple(sigma)

    def __call__(self, img: Image.Image) -> Image.Image:
        s = self.sigma[0] + float(torch.rand(())) * (self.sigma[1] - self.sigma[0])
        return img.filter(ImageFilter.GaussianBlur(radius=s))


def build_strong_photometric(cfg) -> tvt.Compose:
    """Guided Distillation's strong view: ColorJitter(0.4,0.4,0.4,0.1) p=0.8, grayscale p=0.2,
    Gaussian blur sigma U[0.1, 2] p=0.5 (keys SSL.STRONG_*)."""
    ssl = cfg.SSL
    return tvt.Compose([
        tvt.RandomApply([tvt.ColorJitter(*ssl.STRONG_COLOR_JITTER)], p=ssl.STRONG_COLOR_JITTER_PROB),
        tvt.RandomGrayscale(p=ssl.STRONG_GRAYSCALE_PROB),
        tvt.RandomApply([GaussianBlurPIL(ssl.STRONG_BLUR_SIGMA)], p=ssl.STRONG_BLUR_PROB),
    ])


class WeakStrongMapper:
    """Unlabeled image -> {"image": weak view (C, H, W) uint8, "image_strong": strong view,
    height, width, file_name, image_id}. Annotations, if any, are dropped. An unreadable image
    is skipped (None) with a warning in training."""

    @configurable
    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str, strong: tvt.Compose):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format, self.strong = image_format, strong

    @classmethod
    def from_config(cls, cfg):
        return {
            "augmentations": build_mask2former_augmentation(cfg, True),
            "image_format": cfg.INPUT.FORMAT,
            "strong": build_strong_photometric(cfg),
        }

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        d = {k: v for k, v in copy.copy(dataset_dict).items() if k in ("file_name", "image_id", "height", "width")}
        try:
            image = utils.read_image(d["file_name"], format=self.image_format)
        except Exception as e:
            if is_readable_image(d["file_name"]):
                raise
            skip_unreadable(d["file_name"], e)
            return None
        d.setdefault("height", image.shape[0])
        d.setdefault("width", image.shape[1])
        aug = T.AugInput(image)
        self.augmentations(aug)
        weak = aug.image
        rgb = weak if self.image_format == "RGB" else utils.convert_image_to_rgb(weak, self.image_format)
        strong = np.asarray(self.strong(Image.fromarray(np.ascontiguousarray(rgb).astype(np.uint8))))
        if self.image_format != "RGB":
            strong = utils.convert_PIL_to_numpy(Image.fromarray(strong), self.image_format)
        d["image"] = torch.as_tensor(np.ascontiguousarray(weak.transpose(2, 0, 1)))
        d["image_strong"] = torch.as_tensor(np.ascontiguousarray(strong.transpose(2, 0, 1)))
        return d


__all__ = ["Mask2FormerInstanceMapper", "WeakStrongMapper", "build_strong_photometric"]
