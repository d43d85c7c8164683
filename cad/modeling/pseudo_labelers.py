"""Pseudo-label generators (LOST, MaskCut, VoteCut) as Detectron2 meta-architectures.

`MODEL.META_ARCHITECTURE: LOST | MaskCut | VoteCut` builds a model that takes Detectron2's batched
inputs (list of dicts with "image" (C, H, W) uint8 in `INPUT.FORMAT`, "height", "width",
"file_name", "image_id") and returns `[{"instances": Instances}]` at the original image size
(`pred_boxes`, `scores`, `pred_classes` (all 0) and, for the mask methods, `pred_masks` (N, H, W)
bool), so Detectron2's inference loop, evaluators and Visualizer work unchanged.

There is one implementation of each method: the model runs the registered discovery method's
`stage1` then `stage2` (`cad.discovery.method`), exactly what `tools/discover.py` runs, and turns
its COCO annotations into `Instances`. Scores stay float64, so the evaluator's JSON dump equals
tools/discover.py's output. The methods resize and pad the *original* RGB image themselves: the
configs set `INPUT.MIN_SIZE_TEST: 0` (Detectron2: no resize); an input that was resized anyway is
resized back to (height, width) first, with a warning.

These models have no trainable parameters (`trainable = False`): `tools/train_net.py` refuses to
train them and evaluates them with `--eval-only`.

Weights: the ViT files are `CAD.DISCOVERY.WEIGHTS` (one per `CAD.DISCOVERY.ARCHS` entry: a path, a
URL, or "" = the official file, downloaded once into the torch.hub cache). The single-ViT methods (LOST, MaskCut) also take the official DINO file as
`MODEL.WEIGHTS`, as any Detectron2 model does; VoteCut (several ViTs) refuses it. cad's
checkpointer calls `load_own_weights`, which loads the ViTs (strictly, `build_vit`) right away.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances
from PIL import Image
from torch import nn

from cad.backbones.cnn import resolve_backbone_weights
from cad.config import ConfigError
from cad.discovery.export import normalize_annotation
from cad.discovery.method import DiscoveryImage, MethodOptions, method_class
from cad.utils.masks import decode_mask

logger = logging.getLogger(__name__)

__all__ = ["PseudoLabeler", "LOST", "MaskCut", "VoteCut", "models_from_cfg", "vit_overrides_from_cfg"]


def models_from_cfg(cfg) -> Tuple[Tuple[str, Optional[str]], ...]:
    """(arch, weights or None) pairs from CAD.DISCOVERY.ARCHS / WEIGHTS ("" or missing = torch.hub cache)."""
    archs, weights = list(cfg.CAD.DISCOVERY.ARCHS), list(cfg.CAD.DISCOVERY.WEIGHTS)
    if weights and len(weights) != len(archs):
        raise ValueError(
            f"CAD.DISCOVERY.WEIGHTS has {len(weights)} entries but CAD.DISCOVERY.ARCHS has {len(archs)}"
        )
    weights = weights or [""] * len(archs)
    return tuple((a, w or None) for a, w in zip(archs, weights))


def models_with_model_weights(
    models: Tuple[Tuple[str, Optional[str]], ...], weights: str, method: type, name: str
) -> Tuple[Tuple[str, Optional[str]], ...]:
    """`models` with MODEL.WEIGHTS `weights` as the file of the method's single ViT.

    Raises `ConfigError` for a method with several ViTs (`VoteCut`) or when CAD.DISCOVERY.WEIGHTS
    names another file."""
    if not getattr(method, "default_arch", None):
        raise ConfigError(
            f"{name} runs several ViTs: give their files in CAD.DISCOVERY.WEIGHTS (one per CAD.DISCOVERY.ARCHS "
            "entry), not MODEL.WEIGHTS"
        )
    arch, own = models[0] if models else (method.default_arch, None)
    if len(models) > 1:
        raise ConfigError(f"{name} uses one ViT but CAD.DISCOVERY.ARCHS has {len(models)}")
    if own and own != weights:
        raise ConfigError(f"MODEL.WEIGHTS '{weights}' and CAD.DISCOVERY.WEIGHTS '{own}' both give the {name} ViT: keep one")
    return ((arch, weights),)


def vit_overrides_from_cfg(cfg) -> Dict[str, int]:
    """Architecture overrides of the ViTs (non-zero CAD.DISCOVERY.VIT_* keys)."""
    d = cfg.CAD.DISCOVERY
    keys = {"depth": d.VIT_DEPTH, "embed_dim": d.VIT_EMBED_DIM, "num_heads": d.VIT_NUM_HEADS}
    return {k: int(v) for k, v in keys.items() if v}


def _to_rgb(image: torch.Tensor, input_format: str) -> np.ndarray:
    """(C, H, W) uint8 tensor in `input_format` ("RGB" or "BGR") -> RGB uint8 (H, W, 3) array."""
    array = image.detach().to("cpu").permute(1, 2, 0).numpy()
    if input_format == "BGR":
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array, dtype=np.uint8)


class PseudoLabeler(nn.Module):
    """A discovery method (`cad.discovery.method`) behind Detectron2's meta-architecture interface.

    Subclasses set `method_name`, `with_masks` and `method_kwargs_from_cfg`. See the module docstring.
    """

    method_name: str = ""
    # The method returns masks (`pred_masks`, also when an image has none), not only boxes.
    with_masks = True
    # tools/train_net.py reads this: these models only run with --eval-only.
    trainable = False

    @configurable
    def __init__(
        self,
        *,
        options: MethodOptions,
        method_kwargs: Optional[Dict] = None,
        input_format: str = "BGR",
    ) -> None:
        """
        Args:
            options: how the method is built (ViTs, device, CRF), as tools/discover.py builds it.
            method_kwargs: the method's other constructor arguments (thresholds, ViT overrides).
            input_format: channel order of the input "image" tensors, "RGB" or "BGR".
        """
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"{type(self).__name__} needs INPUT.FORMAT RGB or BGR (got '{input_format}')")
        self.input_format = input_format
        self.options = options
        self.method = method_class(self.method_name)(options, **(method_kwargs or {}))
        self._warned_resize = False
        # Fail at build time, with one line, on an unknown architecture or a missing checkpoint
        # (a URL or an absent official file is downloaded now).
        for arch, weights in getattr(self.method, "models", None) or [(self.method.arch, self.method.weights)]:
            if weights != "random":
                resolve_backbone_weights(arch, weights)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        models = models_from_cfg(cfg)
        if cfg.MODEL.WEIGHTS:
            models = models_with_model_weights(models, cfg.MODEL.WEIGHTS, method_class(cls.method_name), cls.__name__)
        options = MethodOptions(models=models, device=cfg.MODEL.DEVICE, crf=bool(cfg.CAD.DISCOVERY.CRF))
        kwargs = dict(cls.method_kwargs_from_cfg(cfg), amp=cfg.CAD.DISCOVERY.AMP or None, **vit_overrides_from_cfg(cfg))
        return {"options": options, "method_kwargs": kwargs, "input_format": cfg.INPUT.FORMAT}

    @classmethod
    def method_kwargs_from_cfg(cls, cfg) -> Dict:
        """Constructor arguments of the method class beyond `MethodOptions` and the ViT overrides."""
        return {}

    def load_own_weights(self, path: str) -> None:
        """Called by cad's checkpointer (`cad.checkpoint.loader`) with MODEL.WEIGHTS, which
        `from_config` already gave the ViT: load the ViT(s) now, strictly, so that a wrong file
        fails here with one line rather than at the first image."""
        configured = {w for _, w in self.options.models}
        if path and path not in configured:
            raise ConfigError(f"{type(self).__name__} reads its ViT weights from its config, not from '{path}'")
        getattr(self.method, "vits", None) or self.method.model

    def _image(self, index: int, inputs: Dict) -> DiscoveryImage:
        """The original-size RGB image of one batched input."""
        image = _to_rgb(inputs["image"], self.input_format)
        height, width = int(inputs.get("height", image.shape[0])), int(inputs.get("width", image.shape[1]))
        if image.shape[:2] != (height, width):
            if not self._warned_resize:
                logger.warning(
                    "%s got a resized image (%s instead of %s): resizing it back; set INPUT.MIN_SIZE_TEST 0 "
                    "to feed the original image (as tools/discover.py does)",
                    type(self).__name__, image.shape[:2], (height, width),
                )
                self._warned_resize = True
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
        image_id = inputs.get("image_id", index)
        return DiscoveryImage(image_id if isinstance(image_id, int) else index, str(inputs.get("file_name", "")), image)

    def _instances(self, image: DiscoveryImage, annotations: Sequence[Dict]) -> Instances:
        height, width = image.image.shape[:2]
        anns = [normalize_annotation(a, image.image_id, height, width) for a in annotations]
        result = Instances((height, width))
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        result.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        # float64: the method's score exactly (the dumped JSON then equals tools/discover.py's).
        result.scores = torch.tensor([a["score"] for a in anns], dtype=torch.float64)
        result.pred_classes = torch.zeros(len(anns), dtype=torch.int64)
        if self.with_masks:
            masks = np.stack([decode_mask(a["segmentation"]) for a in anns]) if anns else np.zeros((0, height, width), bool)
            result.pred_masks = torch.from_numpy(masks)
        return result

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Pseudo-labels of each input: [{"instances": Instances at (height, width)}]."""
        if self.training:
            raise RuntimeError(
                f"{type(self).__name__} has no trainable parameters; run tools/train_net.py with --eval-only"
            )
        images = [self._image(i, inputs) for i, inputs in enumerate(batched_inputs)]
        arrays = self.method.stage1(images)
        return [{"instances": self._instances(img, self.method.stage2(img, arr))} for img, arr in zip(images, arrays)]


@META_ARCH_REGISTRY.register()
class LOST(PseudoLabeler):
    """LOST boxes (`cad.discovery.lost`); CAD.LOST.* keys, one ViT (default dino_vits16)."""

    method_name = "lost"
    with_masks = False

    @classmethod
    def method_kwargs_from_cfg(cls, cfg) -> Dict:
        c = cfg.CAD.LOST
        return {
            "k_patches": c.K_PATCHES, "max_objects": c.MAX_OBJECTS, "min_score": c.MIN_SCORE, "features": c.FEATURES,
            "dinoseg": c.DINOSEG, "dinoseg_head": c.DINOSEG_HEAD, "resnet_dilate": c.RESNET_DILATE,
        }


def _ncut_kwargs(cfg) -> Dict:
    """Settings MaskCut and VoteCut share: ViT input side, graph threshold, eigensolver."""
    d = cfg.CAD.DISCOVERY
    return {"resolution": d.RESOLUTION, "tau": d.TAU, "solver": d.SOLVER}


@META_ARCH_REGISTRY.register()
class MaskCut(PseudoLabeler):
    """MaskCut masks (`cad.discovery.maskcut`); CAD.MASKCUT.* keys, one ViT (default dino_vitb8)."""

    method_name = "maskcut"

    @classmethod
    def method_kwargs_from_cfg(cls, cfg) -> Dict:
        return dict(_ncut_kwargs(cfg), n_cuts=cfg.CAD.MASKCUT.N_CUTS, crf_iou=cfg.CAD.MASKCUT.CRF_IOU)


@META_ARCH_REGISTRY.register()
class VoteCut(PseudoLabeler):
    """VoteCut masks (`cad.discovery.votecut`); CAD.VOTECUT.* keys, several ViTs (default CuVLER's six)."""

    method_name = "votecut"

    @classmethod
    def method_kwargs_from_cfg(cls, cfg) -> Dict:
        v = cfg.CAD.VOTECUT
        return dict(
            _ncut_kwargs(cfg), ks=tuple(v.KS), iou_threshold=v.IOU_THRESHOLD,
            vote_threshold=v.VOTE_THRESHOLD, max_masks=v.MAX_MASKS, num_eig_vecs=v.NUM_EIG_VECS,
        )
