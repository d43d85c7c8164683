"""DINO and DINOv2 ViTs on timm's `VisionTransformer`, loading the official checkpoint files.

Architectures are named as the official torch.hub entries (`dino_vits16`, ..., `dinov2_vitl14`,
plus `dinov2_*_reg` with 4 register tokens). Every model is built with `dynamic_img_size=True`:
the position embedding is interpolated (bicubic, no antialiasing, as the official code) to the
exact patch grid of any input whose sides are multiples of the patch size; images are never
resized to the pre-training size.

Weights (`build_vit(arch, weights)`):

- `weights` a path: that file, loaded strictly;
- `weights=None`: the torch.hub checkpoint cache, `$TORCH_HOME/hub/checkpoints/<official name>`
  (where `torch.hub.load_state_dict_from_url` puts the official download); if it is not there,
  one `WeightsNotFoundError` names the file, its official URL and the folder to put it in;
- `weights="random"`: random initialisation (tests, benchmarks), nothing is read.

Official key layouts: DINO files hold timm's keys as they are (`cls_token`, `pos_embed`,
`patch_embed.proj.*`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`, `norm.*`);
DINO "full" checkpoints (`teacher` dict, `module.backbone.` prefix) are accepted too. DINOv2 files
add `mask_token` and `blocks.N.ls{1,2}.gamma`; with registers they hold `register_tokens` and a
`pos_embed` whose first entry belongs to the CLS token, converted as timm does (the CLS position
folded into `cls_token`, registers without position). Loading is strict: a missing, unexpected
or wrongly shaped key raises `CheckpointLayoutError` naming the keys.
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

__all__ = [
    "VIT_ARCHS",
    "ViTSpec",
    "WeightsNotFoundError",
    "CheckpointLayoutError",
    "build_vit",
    "create_vit",
    "load_official_checkpoint",
    "to_official_state_dict",
    "random_vit",
    "save_random_checkpoint",
    "resolve_weights",
    "official_file",
    "DINO_INTERPOLATE_OFFSET",
]


@dataclass(frozen=True)
class ViTSpec:
    """Architecture of one official model and where its checkpoint comes from."""

    family: str  # "dino" or "dinov2"
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
    def img_size(self) -> int:
        """Pre-training size: the grid of the checkpoint's `pos_embed` (DINO 224, DINOv2 518)."""
        return 224 if self.family == "dino" else 518


_DINO = "https://dl.fbaipublicfiles.com/dino"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"

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
}


# DINO's vision_transformer.py interpolate_pos_encoding: scale factor (grid + 0.1) / pretrain grid
# (the rule of LOST's DINO, commit ba9edd1).
DINO_INTERPOLATE_OFFSET = 0.1


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


class WeightsNotFoundError(FileNotFoundError):
    """The checkpoint of an architecture is neither given nor in the torch.hub cache."""


class CheckpointLayoutError(RuntimeError):
    """A checkpoint file whose keys or shapes do not match the architecture."""


def get_spec(arch: str) -> ViTSpec:
    if arch not in VIT_ARCHS:
        raise ValueError(f"unknown ViT architecture '{arch}'; known: {', '.join(VIT_ARCHS)}")
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
    kwargs.update(overrides)
    model = DinoVisionTransformer(**kwargs)
    model.cad_arch = arch
    return model.eval()


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(arch: str, weights: Optional[Union[str, Path]] = None) -> Path:
    """The checkpoint file of `arch`: `weights` if given, else the torch.hub cache (see module doc)."""
    spec = get_spec(arch)
    return official_file(arch, spec.url, weights)


def official_file(arch: str, url: str, weights: Optional[Union[str, Path]] = None) -> Path:
    """`weights` when given (it must exist), else the torch.hub cache's copy of the official file
    `url` (`$TORCH_HOME/hub/checkpoints/<its name>`); one `WeightsNotFoundError` otherwise."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file '{path}' for {arch} does not exist")
        return path
    file_name = url.rsplit("/", 1)[-1]
    cached = _hub_checkpoint_dir() / file_name
    if cached.is_file():
        return cached
    raise WeightsNotFoundError(
        f"no weights for {arch}: '{file_name}' is not in the torch.hub cache; download {url} "
        f"into '{cached.parent}' ($TORCH_HOME/hub/checkpoints) or pass the file explicitly "
        f"(--weights / CAD.VIT.WEIGHTS)"
    )


def _unwrap(state: Dict) -> Dict[str, torch.Tensor]:
    """The backbone state dict of an official file (plain, or a DINO full checkpoint)."""
    if "teacher" in state:  # DINO training checkpoint: keep the teacher backbone, drop the head
        state = {k.replace("module.", "", 1): v for k, v in state["teacher"].items()}
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return dict(state)


def _from_official(state: Dict[str, torch.Tensor], spec: ViTSpec) -> Dict[str, torch.Tensor]:
    """Official key layout -> timm's (the conversion timm applies to DINOv2 files)."""
    has_mask_token = "mask_token" in state
    if spec.family == "dino" and has_mask_token:
        raise CheckpointLayoutError("found 'mask_token': this is a DINOv2 checkpoint, not a DINO one")
    if spec.family == "dinov2" and not has_mask_token:
        raise CheckpointLayoutError("no 'mask_token': this is not a DINOv2 checkpoint (DINO layout?)")
    state = dict(state)
    if spec.family == "dinov2":
        state.pop("mask_token")
        if spec.reg_tokens:
            if "register_tokens" not in state:
                raise CheckpointLayoutError("no 'register_tokens': a DINOv2 checkpoint without registers")
            pos = state.pop("pos_embed")
            state["reg_token"] = state.pop("register_tokens")
            state["cls_token"] = state.pop("cls_token") + pos[:, :1]
            state["pos_embed"] = pos[:, 1:]
    return state


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


def load_official_checkpoint(model: VisionTransformer, arch: str, path: Union[str, Path]) -> None:
    """Load an official checkpoint file into `model` strictly; clear errors on any mismatch."""
    spec = get_spec(arch)
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / not a torch file; torch's own message spans many lines
        raise CheckpointLayoutError(
            f"cannot read checkpoint '{path}' for {arch}: not a PyTorch checkpoint, or cut short ({type(exc).__name__})"
        ) from exc
    if not isinstance(raw, dict):
        raise CheckpointLayoutError(f"checkpoint '{path}' for {arch} is not a state dict")
    try:
        state = _from_official(_unwrap(raw), spec)
    except CheckpointLayoutError as exc:
        raise CheckpointLayoutError(f"checkpoint '{path}' for {arch}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointLayoutError(
            f"checkpoint '{path}' does not match {arch} ({spec.family} layout): "
            f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    wrong = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointLayoutError(f"checkpoint '{path}' does not match {arch}: wrong shapes {wrong[:8]}")
    model.load_state_dict(state, strict=True)


def build_vit(
    arch: str,
    weights: Optional[Union[str, Path]] = None,
    device: Union[str, torch.device] = "cpu",
    **overrides,
) -> nn.Module:
    """A DINO/DINOv2 ViT in eval mode on `device`.

    `weights`: a checkpoint path, None (torch.hub cache, else `WeightsNotFoundError`) or "random"
    (random init, no file). `overrides` change the architecture (e.g. `depth=2, embed_dim=48,
    num_heads=2` for the small checkpoints written by `save_random_checkpoint`).
    """
    model = create_vit(arch, **overrides)
    if weights != "random":
        load_official_checkpoint(model, arch, resolve_weights(arch, weights))
    return model.to(device).eval()


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
