"""DINO and DINOv2 ViTs (and the DeiT and PyTorch-Pretrained-ViT models of Guided Distillation's
backbones) on timm's `VisionTransformer`, loading the official checkpoint files.

Architectures are named as the official torch.hub entries (`dino_vits16`, ..., `dinov2_vitl14`,
plus `dinov2_*_reg` with 4 register tokens; `deit_base_patch16_384`), or as pytorch_pretrained_vit
names them (`B_16`, `L_16`). Every model is built with `dynamic_img_size=True`:
the position embedding is interpolated (bicubic, no antialiasing, as the official code) to the
exact patch grid of any input whose sides are multiples of the patch size; images are never
resized to the pre-training size.

Weights (`build_vit(arch, weights)`), read through `cad.checkpoint` (docs/weights.md):

- `weights` a path or an http(s):// URL: that file, loaded strictly;
- `weights` None or "": the official file of `arch` (`ViTSpec.url`), downloaded once into the
  torch.hub checkpoint cache, `$TORCH_HOME/hub/checkpoints/<official name>`, as
  `torch.hub.load_state_dict_from_url` / `torch.hub.load` do in the official code (offline:
  `CAD_OFFLINE=1`);
- `weights="random"`: random initialisation (tests, benchmarks), nothing is read.

Official key layouts (`cad.checkpoint.layouts.dino`, `cad.checkpoint.layouts.gd_vit`): DINO files
hold timm's keys as they are; DINO full training checkpoints (`teacher`, `args`) are accepted;
DINOv2 files add `mask_token` and LayerScale, with registers `register_tokens`; DeiT files are
`{"model": state_dict}` with a classifier `head` (dropped); pytorch_pretrained_vit files have
their own names, converted to timm's. Loading is strict: a file of another family, a missing,
unexpected or wrongly shaped key is one `CheckpointError` naming it.
"""
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cad.checkpoint.errors import CheckpointError, WeightsNotFoundError
from cad.checkpoint.layouts.gd_vit import ppvit_resample_pos_embed
from cad.checkpoint.loader import load_layout_weights
from cad.checkpoint.sources import weights_file
from cad.config import ConfigError

__all__ = [
    "VIT_ARCHS",
    "ViTSpec",
    "WeightsNotFoundError",
    "build_vit",
    "create_vit",
    "load_official_checkpoint",
    "to_official_state_dict",
    "random_vit",
    "save_random_checkpoint",
    "resolve_weights",
    "DINO_INTERPOLATE_OFFSET",
    "ppvit_resample_pos_embed",
]


@dataclass(frozen=True)
class ViTSpec:
    """Architecture of one official model and where its checkpoint comes from."""

    family: str  # "dino", "dinov2", "deit" or "ppvit" (PyTorch-Pretrained-ViT, Guided Distillation's vit.py)
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    url: str
    reg_tokens: int = 0

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def layout(self) -> str:
        """The `cad.checkpoint` layout of the official file ("dino", "dinov2", "dinov2_reg", "deit", "ppvit")."""
        if self.family == "dinov2" and self.reg_tokens:
            return "dinov2_reg"
        return self.family

    @property
    def img_size(self) -> int:
        """Size of the model's `pos_embed` grid: the pre-training size (DINO 224, DINOv2 518, DeiT-384
        384), or for "ppvit" the `image_size` 1024 that Guided Distillation builds it with (its
        224-pixel checkpoints are resized to it when loaded)."""
        return {"dino": 224, "dinov2": 518, "deit": 384, "ppvit": 1024}[self.family]


_DINO = "https://dl.fbaipublicfiles.com/dino"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"
# The DINOv2 torch.hub models' position-embedding offset (dinov2/hub/backbones.py), for
# `DinoVisionTransformer.interpolate_offset`.
HUB_INTERPOLATE_OFFSET = 0.1
# DINO's own vision_transformer.py `interpolate_pos_encoding` (w0 + 0.1): the rule of LOST's DINO
# (facebookresearch/dino ba9edd1), for `interpolate_offset` of LOST's ViTs.
DINO_INTERPOLATE_OFFSET = 0.1
_DEIT = "https://dl.fbaipublicfiles.com/deit"
_PPVIT = "https://github.com/lukemelas/PyTorch-Pretrained-ViT/releases/download/0.0.2"

VIT_ARCHS: Dict[str, ViTSpec] = {
    "dino_vits16": ViTSpec("dino", 16, 384, 12, 6, f"{_DINO}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"),
    "dino_vits8": ViTSpec("dino", 8, 384, 12, 6, f"{_DINO}/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth"),
    "dino_vitb16": ViTSpec("dino", 16, 768, 12, 12, f"{_DINO}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    "dino_vitb8": ViTSpec("dino", 8, 768, 12, 12, f"{_DINO}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    "dinov2_vits14": ViTSpec("dinov2", 14, 384, 12, 6, f"{_DINOV2}/dinov2_vits14/dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": ViTSpec("dinov2", 14, 768, 12, 12, f"{_DINOV2}/dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
    "dinov2_vitl14": ViTSpec("dinov2", 14, 1024, 24, 16, f"{_DINOV2}/dinov2_vitl14/dinov2_vitl14_pretrain.pth"),
    "dinov2_vits14_reg": ViTSpec("dinov2", 14, 384, 12, 6, f"{_DINOV2}/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth", 4),
    "dinov2_vitb14_reg": ViTSpec("dinov2", 14, 768, 12, 12, f"{_DINOV2}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth", 4),
    "dinov2_vitl14_reg": ViTSpec("dinov2", 14, 1024, 24, 16, f"{_DINOV2}/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth", 4),
    # facebookresearch/deit hubconf `deit_base_patch16_384` (Guided Distillation's DeiTBaseBackbone).
    "deit_base_patch16_384": ViTSpec("deit", 16, 768, 12, 12, f"{_DEIT}/deit_base_patch16_384-8de9b5d1.pth"),
    # pytorch_pretrained_vit `ViT('B_16')` / `ViT('L_16')` (Guided Distillation's ViT{Base,Large}Backbone);
    # the package has no L_16 file (its URL is None): ViT-L weights must be given as a file.
    "B_16": ViTSpec("ppvit", 16, 768, 12, 12, f"{_PPVIT}/B_16.pth"),
    "L_16": ViTSpec("ppvit", 16, 1024, 24, 16, ""),
}


class DinoVisionTransformer(VisionTransformer):
    """timm's `VisionTransformer`, resizing its position embedding as the official DINO/DINOv2 code.

    Both official codes interpolate bicubically without antialiasing (DINOv2's
    `interpolate_antialias=False`); timm's dynamic size antialiases, whose PIL-style kernel changes
    the embedding by about 4% (relative L2) even when upsampling. The target is the exact patch
    grid, as timm and CuVLER's vendored DINO/DINOv2 do (LOST's DINO copy uses the older
    `scale_factor` formula instead, see docs).
    """

    # None: resample to the exact patch grid (above). A number: the rule of the official DINOv2
    # torch.hub models (dinov2/models/vision_transformer.py `interpolate_pos_encoding`,
    # `interpolate_offset=0.1`), which Guided Distillation's DINOv2 backbones run, and of DINO's own
    # vision_transformer.py (`w0 + 0.1`, `DINO_INTERPOLATE_OFFSET`), which LOST runs: bicubic with
    # scale factor (grid + offset) / pretrain_grid, so the samples sit slightly off the exact grid.
    interpolate_offset: Optional[float] = None
    # Mode of the exact-grid resampling (interpolate_offset None): "bicubic" (DINO, DINOv2) or
    # "bilinear" (Guided Distillation's DeiT backbone, `interpolate_pos_encoding` in its deit.py).
    pos_embed_interpolation: str = "bicubic"
    # align_corners of that resampling (None: the mode's default; True for PyTorch-Pretrained-ViT).
    pos_embed_align_corners: Optional[bool] = None

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, h, w, C) patch embeddings -> (B, prefix + h*w, C) tokens with positions added."""
        if not self.dynamic_img_size:
            return super()._pos_embed(x)
        batch, height, width, dim = x.shape
        num_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        if self.interpolate_offset is None:
            pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                new_size=(height, width),
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=num_prefix,
                interpolation=self.pos_embed_interpolation,
                align_corners=self.pos_embed_align_corners,
                antialias=False,
            )
        else:
            pos_embed = hub_resample_pos_embed(self.pos_embed, (height, width), num_prefix, self.interpolate_offset).to(x.dtype)
        x = x.view(batch, -1, dim)
        prefix = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:  # DINOv2 with registers: CLS/registers carry no position
            return self.pos_drop(torch.cat(prefix + [x + pos_embed], dim=1))
        return self.pos_drop(torch.cat(prefix + [x], dim=1) + pos_embed)


def hub_resample_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int], num_prefix: int, offset: float) -> torch.Tensor:
    """DINOv2 hub rule: (1, prefix + M*M, C) -> (1, prefix + h*w, C) for the patch grid (h, w).

    Unchanged when (h, w) == (M, M); otherwise the (M, M) grid is resized bicubically (float32,
    no antialiasing) with scale factors ((h + offset) / M, (w + offset) / M), whose floor gives
    (h, w) while the sampling positions follow the scale factors. The caller casts the result
    to the tokens' dtype, as the official code.
    """
    m = int(math.sqrt(pos_embed.shape[1] - num_prefix))
    if tuple(grid) == (m, m):
        return pos_embed
    prefix, patch = pos_embed[:, :num_prefix].float(), pos_embed[:, num_prefix:].float()
    dim = patch.shape[-1]
    patch = F.interpolate(
        patch.reshape(1, m, m, dim).permute(0, 3, 1, 2),
        scale_factor=((grid[0] + offset) / m, (grid[1] + offset) / m),
        mode="bicubic",
        antialias=False,
    )
    if tuple(patch.shape[-2:]) != tuple(grid):
        raise ValueError(f"position embedding resized to {tuple(patch.shape[-2:])}, expected {tuple(grid)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((prefix, patch), dim=1)


# pytorch_pretrained_vit's dropout rate (attention weights, after each residual branch).
PPVIT_DROPOUT = 0.1


def get_spec(arch: str) -> ViTSpec:
    if arch not in VIT_ARCHS:
        raise ConfigError(f"unknown ViT architecture '{arch}'; known: {', '.join(VIT_ARCHS)}")
    return VIT_ARCHS[arch]


def create_vit(arch: str, **overrides) -> DinoVisionTransformer:
    """A randomly initialised timm ViT of `arch` (dynamic image size, no classifier head).

    `overrides` replace `depth`, `embed_dim`, `num_heads` (small models for tests) or any other
    `VisionTransformer` argument.
    """
    spec = get_spec(arch)
    kwargs = dict(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        num_classes=0,
        dynamic_img_size=True,
    )
    if spec.family == "dinov2":
        # DINOv2: LayerScale (init 1e-5); registers sit outside the position embedding.
        kwargs.update(init_values=1e-5)
        if spec.reg_tokens:
            kwargs.update(reg_tokens=spec.reg_tokens, no_embed_class=True)
    if spec.family == "ppvit":
        # pytorch_pretrained_vit's dropout_rate 0.1 on the attention weights and after each residual branch.
        kwargs.update(attn_drop_rate=PPVIT_DROPOUT, proj_drop_rate=PPVIT_DROPOUT)
    kwargs.update(overrides)
    model = DinoVisionTransformer(**kwargs)
    if spec.family == "ppvit":
        # Its MLP has no dropout between fc1 and fc2, and its tokens leave the last block without a
        # norm (the norm belongs to the deleted classifier). Grids other than the built one are
        # resampled as its loader resizes checkpoints (see `ppvit_resample_pos_embed`).
        for block in model.blocks:
            block.mlp.drop1 = nn.Identity()
        model.norm = nn.Identity()
        model.pos_embed_interpolation, model.pos_embed_align_corners = "bilinear", True
    model.cad_arch = arch
    return model.eval()


def resolve_weights(arch: str, weights: Optional[Union[str, Path]] = None) -> str:
    """The local checkpoint file of `arch`: `weights` (a path or a URL, downloaded once), else the
    official file (see module doc). Raises `CheckpointError` (one line)."""
    spec = get_spec(arch)
    if not weights and not spec.url:
        raise WeightsNotFoundError(
            f"no weights for {arch}: the official code has no released file for it (the official backbone "
            "fails to build); pass a file in its layout explicitly (CAD.VIT.WEIGHTS) or 'random'"
        )
    return weights_file(str(weights) if weights else None, spec.url, torch_hub=True, option=arch)


def to_official_state_dict(model: VisionTransformer, arch: str) -> Dict[str, torch.Tensor]:
    """timm state dict -> the official key layout of `arch` (inverse of the loading conversion)."""
    spec = get_spec(arch)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if spec.family == "dinov2":
        embed_dim = state["cls_token"].shape[-1]
        state["mask_token"] = torch.zeros(1, embed_dim)
        if spec.reg_tokens:
            # Registers have no position; the official CLS position is folded back out of cls_token.
            cls_pos = torch.zeros(1, 1, embed_dim)
            state["register_tokens"] = state.pop("reg_token")
            state["cls_token"] = state.pop("cls_token") - cls_pos
            state["pos_embed"] = torch.cat([cls_pos, state.pop("pos_embed")], dim=1)
    return state


def load_official_checkpoint(model: VisionTransformer, arch: str, weights: Optional[Union[str, Path]] = None) -> None:
    """Load the checkpoint of `arch` (`weights`: a path, a URL or None for the official file) into
    `model` strictly, through `cad.checkpoint`; one `CheckpointError` on any mismatch."""
    spec = get_spec(arch)
    source = str(weights) if weights else None
    load_layout_weights(model, source, spec.layout, official_url=spec.url, torch_hub=True, option=arch, target=arch)


def build_vit(
    arch: str,
    weights: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
    **overrides,
) -> nn.Module:
    """A ViT of `arch` in eval mode on `device` (None: where it is created, the CPU unless a
    default device is set, e.g. `torch.device("meta")` for shape-only checks).

    `weights`: a checkpoint path or URL, None or "" (the official file, downloaded once into the
    torch.hub cache) or "random" (random init, no file). `overrides` change the architecture (e.g. `depth=2, embed_dim=48,
    num_heads=2` for the small checkpoints written by `save_random_checkpoint`).
    """
    path = None if weights == "random" else resolve_weights(arch, weights)  # fails (or downloads) before the build
    model = create_vit(arch, **overrides)
    if path is not None:
        load_official_checkpoint(model, arch, path)
    return (model if device is None else model.to(device)).eval()


def random_vit(arch: str, seed: int = 0, **overrides) -> VisionTransformer:
    """A random-init `arch` from a fixed seed, with registers and LayerScale made non-trivial."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = create_vit(arch, **overrides)
        if getattr(model, "reg_token", None) is not None:
            nn.init.normal_(model.reg_token, std=0.02)  # timm leaves registers at zero
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("gamma"):  # LayerScale 1e-5 would hide the blocks in tests
                    param.uniform_(0.5, 1.5)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def save_random_checkpoint(arch: str, path: Union[str, Path], seed: int = 0, **overrides) -> Path:
    """Save `random_vit(arch, seed, **overrides)` in the official key layout (tests); returns the path.

    Load it back with `build_vit(arch, path, **overrides)` using the same overrides, e.g.
    `depth=2, embed_dim=48, num_heads=2` for a small model.
    """
    model = random_vit(arch, seed, **overrides)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(to_official_state_dict(model, arch), str(tmp))
    os.replace(tmp, path)
    return path
