"""Multi-scale deformable-attention pixel decoder (Mask2Former's MSDeformAttnPixelDecoder)."""
from typing import Dict, List, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import nn

from cad.modeling.mask2former.ms_deform_attn import MSDeformAttn
from cad.modeling.mask2former.position_encoding import PositionEmbeddingSine

PIXEL_DECODER_REGISTRY = Registry("CAD_PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = "Mask2Former pixel decoders, selected by MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME."


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, then FFN (ReLU)."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ffn), nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes):
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, spatial_shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


def encoder_reference_points(spatial_shapes: torch.Tensor, batch: int, n_levels: int, device) -> torch.Tensor:
    """Pixel centres ((i+0.5)/H, (j+0.5)/W) as (x, y) of every level: (B, S, L, 2) (no padding)."""
    refs = []
    for h, w in spatial_shapes.tolist():
        ys, xs = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h,
            (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w,
            indexing="ij",
        )
        refs.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
    ref = torch.cat(refs, 0)
    return ref[None, :, None].expand(batch, -1, n_levels, -1)


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable transformer encoder on the coarsest `transformer_in_features` levels, plus an
    FPN path to the finer levels; returns 1/`common_stride` mask features and the multi-scale
    features (coarse to fine) used by the transformer decoder."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: str,
        transformer_in_features: List[str],
        transformer_enc_layers: int,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_dropout: float,
        common_stride: int,
        n_points: int = 4,
    ):
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda x: x[1].stride)
        self.in_features = [k for k, _ in shapes]
        tr_shapes = sorted(((k, v) for k, v in shapes if k in transformer_in_features), key=lambda x: x[1].stride)
        self.transformer_in_features = [k for k, _ in tr_shapes]
        self.transformer_feature_strides = [v.stride for _, v in tr_shapes]
        self.n_levels = len(self.transformer_in_features)
        # coarse to fine
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(v.channels, conv_dim, 1), nn.GroupNorm(32, conv_dim)) for _, v in tr_shapes[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, transformer_dim_feedforward, transformer_dropout, self.n_levels, transformer_nheads, n_points)
            for _ in range(transformer_enc_layers)
        )
        self.level_embed = nn.Parameter(torch.empty(self.n_levels, conv_dim))
        nn.init.normal_(self.level_embed)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3
        self.common_stride = common_stride
        min_stride = min(self.transformer_feature_strides)
        num_fpn = max(0, int(torch.log2(torch.tensor(min_stride / common_stride)).item()))
        self.lateral_convs, self.output_convs = nn.ModuleList(), nn.ModuleList()
        use_bias = norm == ""
        for k, v in shapes[:num_fpn][::-1]:  # fine levels not in the encoder, coarse to fine
            lateral = Conv2d(v.channels, conv_dim, 1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, 3, padding=1, bias=use_bias, norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.fpn_features = [k for k, _ in shapes[:num_fpn][::-1]]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            # the reference hard-codes 1024 here (it does not read MASK_FORMER.DIM_FEEDFORWARD)
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """features: backbone maps by name. Returns mask features (B, mask_dim, H/s, W/s) and
        `maskformer_num_feature_levels` maps (B, conv_dim, h_l, w_l), coarse to fine.
        Runs in fp32 with autocast off, as the reference."""
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_features(features)

    def _forward_features(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        srcs, pos = [], []
        for i, name in enumerate(self.transformer_in_features[::-1]):
            x = self.input_proj[i](features[name].float())
            srcs.append(x)
            pos.append(self.pe_layer(x))
        shapes = torch.as_tensor([s.shape[-2:] for s in srcs], dtype=torch.long, device=srcs[0].device)
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat([(p.flatten(2).transpose(1, 2) + self.level_embed[i]) for i, p in enumerate(pos)], 1)
        refs = encoder_reference_points(shapes, src_flat.shape[0], self.n_levels, src_flat.device)
        memory = src_flat
        for layer in self.layers:
            memory = layer(memory, pos_flat, refs, shapes)
        sizes = [int(h) * int(w) for h, w in shapes.tolist()]
        outs = [
            m.transpose(1, 2).reshape(m.shape[0], -1, int(h), int(w))
            for m, (h, w) in zip(memory.split(sizes, 1), shapes.tolist())
        ]
        for name, lateral, output in zip(self.fpn_features, self.lateral_convs, self.output_convs):
            x = lateral(features[name].float())
            y = x + F.interpolate(outs[-1], size=x.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(output(y))
        return self.mask_features(outs[-1]), outs[: self.maskformer_num_feature_levels]
