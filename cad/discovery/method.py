"""The contract between discovery methods (LOST, MaskCut, VoteCut) and the pipeline.

The pipeline (`cad/discovery/pipeline.py`) runs every method in two stages:

- stage 1 (GPU when present): `method.stage1(images)` gets a batch of images (a list of
  `--batch-size` `DiscoveryImage`s of possibly different sizes; the method resizes/pads and
  batches them as it needs) and returns, per image and in the same order, a dict of numpy arrays
  (features, eigenvectors, ...) that the pipeline stores per chunk of images on disk;
- stage 2 (CPU, `--workers` processes): `method.stage2(image, arrays)` turns one image's arrays
  into COCO annotations: `bbox` [x, y, w, h] in original pixels, `score`, and for mask methods
  `segmentation` as compressed RLE at the original size (`cad.discovery.export.encode_mask`).
  The pipeline adds `id`, `image_id`, `category_id` (1), `area` and `iscrowd` (0). A step that
  fails on one image and is recovered from (VoteCut keeps the unrefined mask when the CRF raises)
  is counted, not hidden: stage 2 then returns a `Stage2Annotations` list whose `failures`
  ({kind: count}) the pipeline adds up into its summary and the output JSON's `info`.

Methods register themselves with `@register_method(name)` under the name used by
`tools/discover.py {lost,maskcut,votecut}`, in a module `cad.discovery.<name>` (imported on first
use by `build_method`). A method is built as `cls(options)` with a `MethodOptions`; building must
be cheap (load the ViTs lazily, on the first `stage1` call), because the pipeline builds one
instance in every stage-2 worker process from the same `MethodOptions` (so everything `stage2`
depends on must follow from them), and `stage2` must not need the ViTs.
"""
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np
import torch

from cad.errors import UserError

# name ("lost", "maskcut", "votecut") -> class following `DiscoveryMethod`.
DISCOVERY_METHODS: Dict[str, type] = {}

# The methods of tools/discover.py; each lives in the module `cad.discovery.<name>`.
BUILTIN_METHODS = ("lost", "maskcut", "votecut")


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator adding a method to `DISCOVERY_METHODS` under `name`."""

    def register(cls: type) -> type:
        if name in DISCOVERY_METHODS:
            raise KeyError(f"discovery method '{name}' is already registered")
        DISCOVERY_METHODS[name] = cls
        return cls

    return register


@dataclass
class DiscoveryImage:
    """One input image: `image` is RGB uint8 (H, W, 3) at the original size."""

    image_id: int
    file_name: str
    image: np.ndarray


@dataclass(frozen=True)
class MethodOptions:
    """How a method is built.

    models: (architecture, weights file or None) pairs in order, e.g. (("dino_vits16", None),);
        None as weights means the torch.hub cache under the official file name; an empty tuple
        means the method's own default model(s).
    device: torch device of stage 1 ("cpu", "cuda", "cuda:1").
    crf: run the dense CRF post-processing (mask methods; `--no-crf` sets it False).
    params: (name, value) pairs passed to the method's constructor as keyword arguments
        (method-specific options, e.g. LOST's `features`, `dinoseg`).
    """

    models: Tuple[Tuple[str, Optional[str]], ...] = ()
    device: str = "cpu"
    crf: bool = True
    params: Tuple[Tuple[str, Any], ...] = ()


class Stage2Annotations(list):
    """stage2's annotation list with `failures`: {kind: count} of recovered per-image failures."""

    def __init__(self, annotations=(), failures: Optional[Dict[str, int]] = None) -> None:
        super().__init__(annotations)
        self.failures: Dict[str, int] = {k: v for k, v in (failures or {}).items() if v}


def stage2_failures(annotations: List[Dict]) -> Dict[str, int]:
    """The failure counts of a stage-2 result ({} for a plain list)."""
    return dict(getattr(annotations, "failures", {}))


class DiscoveryMethod(Protocol):
    """What the pipeline calls; see the module docstring."""

    def __init__(self, options: MethodOptions) -> None:
        ...

    def stage1(self, images: List[DiscoveryImage]) -> List[Dict[str, np.ndarray]]:
        ...

    def stage2(self, image: DiscoveryImage, arrays: Dict[str, np.ndarray]) -> List[Dict]:
        ...


class UnknownMethodError(UserError, KeyError):
    """A method name that is neither registered nor a module `cad.discovery.<name>`."""

    def __str__(self) -> str:
        return str(self.args[0])


def available_methods() -> List[str]:
    """Names accepted by `build_method`: the built-in ones plus any registered so far."""
    return sorted(set(BUILTIN_METHODS) | set(DISCOVERY_METHODS))


def method_class(name: str) -> type:
    """The class registered as `name`, importing `cad.discovery.<name>` when needed."""
    if name not in DISCOVERY_METHODS and name in BUILTIN_METHODS:
        try:
            importlib.import_module(f"cad.discovery.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"cad.discovery.{name}":
                raise
            raise UnknownMethodError(f"discovery method '{name}' is not installed (no module cad.discovery.{name})") from None
    if name not in DISCOVERY_METHODS:
        raise UnknownMethodError(
            f"unknown discovery method '{name}' (available: {', '.join(available_methods())})"
        )
    return DISCOVERY_METHODS[name]


def build_method(name: str, options: MethodOptions) -> DiscoveryMethod:
    """Build the method registered as `name` (see the module docstring) with `options.params`."""
    return method_class(name)(options, **dict(options.params))


class LazyViT:
    """Mixin for single-ViT methods: `self.model` is built from `arch`, `weights`, `device` and
    `vit_overrides` on first use, so building a method (e.g. in a stage-2 worker) stays cheap."""

    arch: str
    weights: Optional[str]
    device: str
    vit_overrides: Dict
    _model: Optional[torch.nn.Module] = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            from cad.backbones.vit import build_vit

            self._model = build_vit(self.arch, self.weights, device=self.device, **self.vit_overrides)
        return self._model
