"""Dataset mapper: Detectron2's `DatasetMapper` plus per-instance scores and corrupt-image handling."""
import logging
from typing import Dict, List, Optional

import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from PIL import Image

from cad.errors import UserError

logger = logging.getLogger(__name__)


class CorruptImageError(UserError, RuntimeError):
    """An image file of a split that cannot be decoded; built by `CorruptImageError.of(file_name)`.

    The constructor takes the message alone because an error raised in a DataLoader worker reaches
    the main process rebuilt from its text (torch calls `CorruptImageError(text)`); `file_name` is
    then empty.
    """

    def __init__(self, message: str, file_name: str = ""):
        super().__init__(message)
        self.file_name = file_name

    @classmethod
    def of(cls, file_name: str, reason: object = "") -> "CorruptImageError":
        return cls(f"cannot read image '{file_name}'" + (f": {reason}" if reason else ""), file_name)


def skip_unreadable(file_name: str, reason: object) -> None:
    """Training-time policy for an image that cannot be decoded: count it in
    `CadDatasetMapper.num_skipped` and warn; the mapper then returns None and Detectron2's dataset
    draws another item."""
    CadDatasetMapper.num_skipped += 1
    logger.warning(
        "Skipping unreadable image '%s' (%s); %d skipped so far in this process", file_name, reason, CadDatasetMapper.num_skipped
    )


def is_readable_image(file_name: str) -> bool:
    """True when PIL can fully decode `file_name`."""
    try:
        with Image.open(file_name) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


class CadDatasetMapper(DatasetMapper):
    """`DatasetMapper` that

    - keeps each annotation's `score` as `instances.gt_scores` (float32, 1.0 where absent), the
      soft target of pseudo-labels (CuVLER); instances are filtered together with their scores;
    - in training, skips an unreadable image with a warning (Detectron2's dataset then draws
      another one) and counts it; in inference, raises one `CorruptImageError` naming the file.
    """

    num_skipped = 0

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        try:
            return super().__call__(dataset_dict)
        except Exception as e:
            file_name = dataset_dict.get("file_name", "")
            if not file_name or is_readable_image(file_name):
                raise
            if not self.is_train:
                raise CorruptImageError.of(file_name, e) from e
            skip_unreadable(file_name, e)
            return None

    def _transform_annotations(self, dataset_dict: Dict, transforms, image_shape) -> None:
        for anno in dataset_dict["annotations"]:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        annos: List[Dict] = [
            utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for obj in dataset_dict.pop("annotations")
            if obj.get("iscrowd", 0) == 0
        ]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        instances.gt_scores = torch.tensor([float(obj.get("score", 1.0)) for obj in annos], dtype=torch.float32)
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
