"""Swin Transformer as Mask2Former's / Guided Distillation's `D2SwinTransformer` backbone.

Computes what the official backbone computes (GuidedDistillation and Mask2Former
`mask2former/modeling/backbone/swin.py`, identical in both, itself from Swin's mmseg backbone)
and has its module names, so the ImageNet Swin files converted by the official
`tools/convert-pretrained-swin-model-to-d2.py` (a `.pkl` with `matching_heuristics`) initialise
it through `cad.checkpoint` and Guided Distillation / Mask2Former checkpoints load strictly.

Built from timm's parts (`WindowAttention`, `Mlp`, `PatchMerging`, `PatchEmbed`, `DropPath`,
`window_partition` / `window_reverse`), which compute the same functions. timm's
`SwinTransformer` itself is not used: it rolls the shifted windows *before* padding the feature map
to a window multiple, the official block pads first (with zeros after `norm1`, tokens that the
attention does not mask) and rolls the padded map; the two differ as soon as a side is not a
multiple of the window (e.g. 1024 / 4 = 256 tokens, window 7 or 12). timm also puts the patch
merging at the start of the next stage (`layers.{i+1}.downsample`) and has one final norm,
where the official backbone has `layers.{i}.downsample` and one LayerNorm per output
(`norm0`..`norm3`).

Outputs "res2".."res5" (strides 4..32, channels EMBED_DIM * 1, 2, 4, 8), MODEL.SWIN.OUT_FEATURES
of them; `size_divisibility` 32.
"""
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from timm.models import swin_transformer as timm_swin
from torch import nn
from torch.utils import checkpoint

from cad.utils.io import atomic_write_bytes

__all__ = ["SwinTransformer", "SwinBackbone", "D2SwinTransformer", "shifted_window_mask", "convert_swin_checkpoint"]

# The released ImageNet Swin files (github.com/SwinTransformer/storage v1.0.0) that the official
# configs name, converted to `<name>.pkl`; the official README's download list.
SWIN_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0"
SWIN_FILES = (
    "swin_tiny_patch4_window7_224.pth",
    "swin_small_patch4_window7_224.pth",
    "swin_base_patch4_window12_384.pth",
    "swin_base_patch4_window12_384_22k.pth",
    "swin_large_patch4_window12_384_22k.pth",
)

# The official attention-mask value between tokens of different shifted regions.
_MASKED = -100.0


class WindowAttention(timm_swin.WindowAttention):
    """timm's window attention (relative position bias, optional mask), with the official
    persistent `relative_position_index` buffer (a key of the official state dicts)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool, qk_scale: Optional[float],
                 attn_drop: float, proj_drop: float) -> None:
        super().__init__(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.register_buffer("relative_position_index", self.relative_position_index, persistent=True)
        if qk_scale:  # MODEL.SWIN.QK_SCALE overrides head_dim ** -0.5 (official `qk_scale or head_dim ** -0.5`)
            self.scale = qk_scale
            self.fused_attn = False  # timm's fused path (off by default) would ignore `scale`


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Attention mask of shifted windows on a (height, width) map padded to window multiples.

    The official rule (`BasicLayer.forward`): the padded map is split into 3 x 3 regions by the
    slices [0, -window), [-window, -shift), [-shift, end) of each side; two tokens of one window
    attend to each other only when they are in the same region. Returns (num_windows,
    window*window, window*window) float: 0 (same region) or -100.
    """
    padded = [-(-side // window) * window for side in (height, width)]

    def region(size: int) -> torch.Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()

    ids = (region(padded[0])[:, None] * 3 + region(padded[1])[None, :]).float()[None, :, :, None]
    windows = timm_swin.window_partition(ids, (window, window)).reshape(-1, window * window)
    same = windows[:, None, :] == windows[:, :, None]
    return torch.zeros(same.shape, device=device).masked_fill(~same, _MASKED)


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and MLP, pre-norm, on tokens (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: Optional[float], drop: float, attn_drop: float, drop_path: float) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C); attn_mask from `shifted_window_mask` (used when the block shifts)."""
        _, height, width, channels = x.shape
        window = self.window_size
        # Official order: norm, pad with zeros to window multiples, then roll the padded map.
        y = F.pad(self.norm1(x), (0, 0, 0, (window - width % window) % window, 0, (window - height % window) % window))
        padded = y.shape[1:3]
        if self.shift_size:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = timm_swin.window_partition(y, (window, window)).reshape(-1, window * window, channels)
        windows = self.attn(windows, mask=attn_mask if self.shift_size else None)
        y = timm_swin.window_reverse(windows.reshape(-1, window, window, channels), (window, window), *padded)
        if self.shift_size:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x + self.drop_path(y[:, :height, :width].contiguous())
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """One stage: blocks alternating plain and shifted windows, then (all but the last stage)
    2x2 patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, qkv_bias: bool,
                 qk_scale: Optional[float], drop: float, attn_drop: float, drop_path: Sequence[float],
                 downsample: bool, use_checkpoint: bool) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                                 qkv_bias, qk_scale, drop, attn_drop, drop_path[i])
            for i in range(depth)
        )
        self.downsample = timm_swin.PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, H, W, C) -> (stage output (B, H, W, C), next stage input (B, ceil(H/2), ceil(W/2), 2C))."""
        mask = shifted_window_mask(x.shape[1], x.shape[2], self.window_size, self.shift_size, x.device)
        for block in self.blocks:
            x = checkpoint.checkpoint(block, x, mask, use_reentrant=False) if self.use_checkpoint else block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class SwinTransformer(nn.Module):
    """Patch embedding (4x4, LayerNorm), optional absolute position embedding, 4 stages, one
    LayerNorm per output stage. forward(x (B, 3, H, W)) -> {"res{i+2}": (B, C_i, H/2^(i+2), W/2^(i+2))}
    (sides rounded up: the input is padded to the patch size, odd maps are padded before merging)."""

    def __init__(
        self,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        patch_norm: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.num_layers = len(depths)
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=patch_size, embed_dim=embed_dim, norm_layer=nn.LayerNorm if patch_norm else None,
            output_fmt="NHWC", strict_img_size=False, dynamic_img_pad=True,
        )
        self.ape = ape
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        # Stochastic depth grows linearly over all blocks (official `dpr`).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(self.num_layers + 1)]
        self.layers = nn.ModuleList(
            BasicLayer(embed_dim * 2**i, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale, drop_rate,
                       attn_drop_rate, rates[starts[i]:starts[i + 1]], i < self.num_layers - 1, use_checkpoint)
            for i in range(self.num_layers)
        )
        self.num_features = [embed_dim * 2**i for i in range(self.num_layers)]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        if self.ape:
            pos = F.interpolate(self.absolute_pos_embed, size=x.shape[1:3], mode="bicubic")
            x = x + pos.permute(0, 2, 3, 1)
        x = self.pos_drop(x)
        outputs = {}
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            if i in self.out_indices:
                outputs[f"res{i + 2}"] = getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous()
        return outputs


class SwinBackbone(SwinTransformer, Backbone):
    """`SwinTransformer` as a Detectron2 backbone returning `out_features` of res2..res5."""

    def __init__(self, out_features: Sequence[str] = ("res2", "res3", "res4", "res5"), **kwargs) -> None:
        super().__init__(**kwargs)
        names = [f"res{i + 2}" for i in range(self.num_layers)]
        unknown = sorted(set(out_features) - set(names))
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES: unknown {unknown}; the Swin outputs are {names}")
        self._out_features: List[str] = list(out_features)
        self._out_feature_strides = {name: 2 ** (i + 2) for i, name in enumerate(names)}
        self._out_feature_channels = dict(zip(names, self.num_features))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x (B, 3, H, W) -> {name: (B, C, H/stride, W/stride)} for the out features."""
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes an input of shape (N, C, H, W), got {tuple(x.shape)}")
        outputs = super().forward(x)
        return {name: outputs[name] for name in self._out_features}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    @property
    def size_divisibility(self) -> int:
        return 32


@BACKBONE_REGISTRY.register()
def D2SwinTransformer(cfg, input_shape: ShapeSpec) -> Backbone:  # noqa: N802 (official registry name)
    """The official `D2SwinTransformer` from MODEL.SWIN.* (cad/config.py)."""
    swin = cfg.MODEL.SWIN
    return SwinBackbone(
        out_features=swin.OUT_FEATURES,
        pretrain_img_size=swin.PRETRAIN_IMG_SIZE,
        patch_size=swin.PATCH_SIZE,
        embed_dim=swin.EMBED_DIM,
        depths=list(swin.DEPTHS),
        num_heads=list(swin.NUM_HEADS),
        window_size=swin.WINDOW_SIZE,
        mlp_ratio=swin.MLP_RATIO,
        qkv_bias=swin.QKV_BIAS,
        qk_scale=swin.QK_SCALE,
        drop_rate=swin.DROP_RATE,
        attn_drop_rate=swin.ATTN_DROP_RATE,
        drop_path_rate=swin.DROP_PATH_RATE,
        ape=swin.APE,
        patch_norm=swin.PATCH_NORM,
        use_checkpoint=swin.USE_CHECKPOINT,
    )


def convert_swin_checkpoint(src: Union[str, Path], dst: Union[str, Path]) -> int:
    """Write the released ImageNet Swin file `src` (a path or a URL; `cad.checkpoint.layouts.swin`)
    as the Detectron2 `.pkl` of the official `tools/convert-pretrained-swin-model-to-d2.py`:
    `{"model": state_dict, "__author__": "third_party", "matching_heuristics": True}`, a
    backbone-only initialisation for MODEL.WEIGHTS (the classifier `head`, the final `norm` and the
    `attn_mask` buffers match no backbone key and stay unused, as in the official loading). Returns
    the number of tensors. Raises `cad.checkpoint.CheckpointError` (one line) when `src` cannot be
    read or is not a Swin release."""
    from cad.checkpoint.loader import read_layout

    _, state = read_layout(str(src), "swin", option="Swin release")
    payload = {"model": state, "__author__": "third_party", "matching_heuristics": True}
    atomic_write_bytes(Path(dst), pickle.dumps(payload))
    return len(state)
