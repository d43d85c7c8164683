"""Masked-attention transformer decoder (Mask2Former's `MultiScaleMaskedTransformerDecoder`).

Module and parameter names are those of the official
`mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py`
(`transformer_{self,cross}_attention_layers`, `transformer_ffn_layers`, `decoder_norm`,
`query_feat`, `query_embed`, `level_embed`, `input_proj`, `class_embed`, `mask_embed.layers`),
so an official state dict loads one to one.
"""
from typing import Dict, List, Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn

from cad.modeling.mask2former.position_encoding import PositionEmbeddingSine


def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention: norm(tgt + attn(q=k=tgt+query_pos, v=tgt)). tgt (Q, B, C)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor, query_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        q = tgt if query_pos is None else tgt + query_pos
        return self.norm(tgt + self.dropout(self.self_attn(q, q, value=tgt)[0]))


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention: norm(tgt + attn(tgt+query_pos, memory+pos, memory, attn_mask)).
    tgt (Q, B, C), memory (S, B, C), attn_mask (B*heads, Q, S) True = blocked."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier_init(self)

    def forward(self, tgt, memory, attn_mask=None, pos=None, query_pos=None) -> torch.Tensor:
        q = tgt if query_pos is None else tgt + query_pos
        k = memory if pos is None else memory + pos
        out = self.multihead_attn(query=q, key=k, value=memory, attn_mask=attn_mask)[0]
        return self.norm(tgt + self.dropout(out))


class FFNLayer(nn.Module):
    """Post-norm feed-forward: norm(tgt + linear2(relu(linear1(tgt))))."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class MLP(nn.Module):
    """`num_layers` linear layers (`layers.i`) with ReLU in between."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Learnable queries refined by `dec_layers` layers of masked cross-attention (on the 3
    pixel-decoder levels, round-robin), self-attention and FFN; a prediction (class logits
    (B, Q, K+1), mask logits (B, Q, H, W)) before the first layer and after each layer."""

    # The official class has `_version = 2` and, for state dicts without version metadata,
    # renames the pre-release key `static_query` to `query_feat`. cad keeps version 2 so files
    # it saves load unchanged in the official code; it has no pre-release files to convert.
    _version = 2

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        super().__init__()
        if pre_norm:
            raise ValueError("MASK_FORMER.PRE_NORM=True is not supported (Mask2Former uses post-norm)")
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads, self.num_layers = nheads, dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_feature_levels = 3  # the official decoder always uses 3 scales
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                conv = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError("MODEL.MASK_FORMER.DEC_LAYERS must be >= 1")
        return {
            "in_channels": in_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # DEC_LAYERS counts the prediction made from the learnable queries (official: DEC_LAYERS-1 layers)
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        }

    def forward_prediction_heads(self, output, mask_features, target_size) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """output (Q, B, C) -> class logits (B, Q, K+1), mask logits (B, Q, H, W) and the
        attention mask (B*heads, Q, h*w) at `target_size`: True (blocked) where sigmoid < 0.5."""
        decoded = self.decoder_norm(output).transpose(0, 1)
        logits = self.class_embed(decoded)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        attn = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        attn = (attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1) < 0.5).detach()
        return logits, masks, attn

    def forward(self, x: List[torch.Tensor], mask_features: torch.Tensor) -> Dict:
        """x: 3 pixel-decoder levels (B, C, h_l, w_l), coarse to fine; mask_features (B, D, H, W).
        Returns pred_logits, pred_masks (last layer) and aux_outputs (earlier predictions)."""
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        srcs, pos, sizes = [], [], []
        for i, feat in enumerate(x):
            sizes.append(feat.shape[-2:])
            pos.append(self.pe_layer(feat).flatten(2).permute(2, 0, 1))
            src = self.input_proj[i](feat).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1))
        b = srcs[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)
        logits, masks, attn = self.forward_prediction_heads(output, mask_features, sizes[0])
        all_logits, all_masks = [logits], [masks]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            attn[attn.sum(-1) == attn.shape[-1]] = False  # a query blocked everywhere attends everywhere
            output = self.transformer_cross_attention_layers[i](
                output, srcs[level], attn_mask=attn, pos=pos[level], query_pos=query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_embed)
            output = self.transformer_ffn_layers[i](output)
            logits, masks, attn = self.forward_prediction_heads(output, mask_features, sizes[(i + 1) % self.num_feature_levels])
            all_logits.append(logits)
            all_masks.append(masks)
        return {
            "pred_logits": all_logits[-1],
            "pred_masks": all_masks[-1],
            "aux_outputs": [{"pred_logits": a, "pred_masks": m} for a, m in zip(all_logits[:-1], all_masks[:-1])],
        }
