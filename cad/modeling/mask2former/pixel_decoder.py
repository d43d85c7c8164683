"""Multi-scale deformable-attention pixel decoder (Mask2Former's `MSDeformAttnPixelDecoder`).

Module and parameter names are those of the official
`mask2former/modeling/pixel_decoder/msdeformattn.py` (`input_proj`, `transformer.level_embed`,
`transformer.encoder.layers.N.{self_attn,norm1,linear1,linear2,norm2}`, `mask_features`,
`adapter_N`/`layer_N` for the FPN levels, `pe_layer`), so an official state dict loads one to one.
"""
import math
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


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, then FFN (ReLU). src/pos (B, S, C)."""

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


class MSDeformAttnTransformerEncoder(nn.Module):
    """`layers` applied in sequence, all sampling around the same reference points."""

    def __init__(self, layers: List[MSDeformAttnTransformerEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src, spatial_shapes, pos):
        reference_points = encoder_reference_points(spatial_shapes, src.shape[0], src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable DETR's encoder on flattened levels with a learnable `level_embed` (L, C) added
    to the position encodings. No padding mask: the official pixel decoder passes all-valid masks."""

    def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, dim_feedforward: int, dropout: float, num_feature_levels: int, enc_n_points: int = 4):
        super().__init__()
        self.encoder = MSDeformAttnTransformerEncoder(
            [
                MSDeformAttnTransformerEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """srcs/pos_embeds: per level (B, C, h_l, w_l). Returns memory (B, S, C) and (L, 2) shapes."""
        shapes = torch.as_tensor([s.shape[-2:] for s in srcs], dtype=torch.long, device=srcs[0].device)
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1) for i, p in enumerate(pos_embeds)], 1)
        return self.encoder(src_flat, shapes, pos_flat), shapes


def encoder_reference_points(spatial_shapes: torch.Tensor, batch: int, device) -> torch.Tensor:
    """Pixel centres ((i+0.5)/H, (j+0.5)/W) as (x, y) of every level, for every level:
    (B, S, L, 2) (the official `get_reference_points` with all-valid masks)."""
    refs = []
    for h, w in spatial_shapes.tolist():
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device) / h,
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device) / w,
            indexing="ij",
        )
        refs.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), -1))
    ref = torch.cat(refs, 0)
    return ref[None, :, None].expand(batch, -1, len(refs), -1)


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable transformer encoder on the `transformer_in_features` levels, plus an FPN path
    (`adapter_i` lateral 1x1, `layer_i` output 3x3, i = 1 for the finest) down to
    1/`common_stride`; returns mask features and 3 multi-scale maps (coarse to fine)."""

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
    ):
        super().__init__()
        shapes = sorted(input_shape.items(), key=lambda x: x[1].stride)
        self.in_features = [k for k, _ in shapes]
        tr_shapes = [(k, v) for k, v in shapes if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in tr_shapes]
        self.transformer_num_feature_levels = len(tr_shapes)
        # coarse to fine (res5 -> res3)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(v.channels, conv_dim, 1), nn.GroupNorm(32, conv_dim)) for _, v in tr_shapes[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            conv_dim, transformer_nheads, transformer_enc_layers, transformer_dim_feedforward, transformer_dropout,
            self.transformer_num_feature_levels,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3  # always 3 scales for the transformer decoder
        self.common_stride = common_stride
        min_stride = min(v.stride for _, v in tr_shapes)
        self.num_fpn_levels = max(0, int(math.log2(min_stride) - math.log2(common_stride)))
        lateral_convs, output_convs = [], []
        use_bias = norm == ""
        for idx, (_, v) in enumerate(shapes[: self.num_fpn_levels]):
            lateral = Conv2d(v.channels, conv_dim, 1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, 3, padding=1, bias=use_bias, norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # plain lists (not in the state dict twice), coarse to fine for the top-down pass
        self.lateral_convs, self.output_convs = lateral_convs[::-1], output_convs[::-1]

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
            # the official from_config hard-codes 1024 (it does not read MASK_FORMER.DIM_FEEDFORWARD)
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """features: backbone maps by name. Returns mask features (B, mask_dim, H/s, W/s) and
        `maskformer_num_feature_levels` maps (B, conv_dim, h_l, w_l), coarse to fine.
        Runs in fp32 with autocast off, as the official one."""
        device_type = next(iter(features.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._forward_features(features)

    def _forward_features(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        srcs, pos = [], []
        for i, name in enumerate(self.transformer_in_features[::-1]):
            x = self.input_proj[i](features[name].float())
            srcs.append(x)
            pos.append(self.pe_layer(x))  # depends on the map size only
        memory, shapes = self.transformer(srcs, pos)
        sizes = [int(h) * int(w) for h, w in shapes.tolist()]
        outs = [
            m.transpose(1, 2).reshape(m.shape[0], -1, int(h), int(w))
            for m, (h, w) in zip(memory.split(sizes, 1), shapes.tolist())
        ]
        for name, lateral, output in zip(self.in_features[: self.num_fpn_levels][::-1], self.lateral_convs, self.output_convs):
            x = lateral(features[name].float())
            y = x + F.interpolate(outs[-1], size=x.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(output(y))
        return self.mask_features(outs[-1]), outs[: self.maskformer_num_feature_levels]
