"""Multi-scale deformable attention equals a naive per-point bilinear-sampling loop."""
import math

import torch

from cad.modeling.mask2former.ms_deform_attn import MSDeformAttn, ms_deform_attn_core

torch.set_num_threads(1)


def _bilinear_zero_pad(v: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """v (D, H, W); (x, y) normalised in [0,1] with pixel centres at (i+0.5)/W (align_corners=False)."""
    _, h, w = v.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(v.shape[0], dtype=v.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out += wy * wx * v[:, yy, xx]
    return out


def _naive(value, shapes, loc, attn):
    n, _, m, d = value.shape
    _, lq, _, nl, npnt, _ = loc.shape
    starts = [0]
    for h, w in shapes.tolist():
        starts.append(starts[-1] + h * w)
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes.tolist()):
                    vmap = value[b, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for p in range(npnt):
                        x, y = loc[b, q, head, lvl, p].tolist()
                        out[b, q, head] += attn[b, q, head, lvl, p] * _bilinear_zero_pad(vmap, x, y)
    return out.flatten(2)


def test_core_matches_naive_bilinear_loop():
    g = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[5, 7], [3, 4], [2, 2]])
    n, lq, m, d, p = 2, 3, 2, 4, 3
    value = torch.randn(n, int((shapes[:, 0] * shapes[:, 1]).sum()), m, d, generator=g, dtype=torch.float64)
    # some locations fall outside [0, 1] to exercise zero padding
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    attn = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=torch.float64)
    attn = attn / attn.flatten(-2).sum(-1)[..., None, None]
    got = ms_deform_attn_core(value, shapes, loc, attn)
    assert got.shape == (n, lq, m * d)
    torch.testing.assert_close(got, _naive(value, shapes, loc, attn))


def test_module_gradients_and_padding_mask():
    torch.manual_seed(0)
    shapes = torch.tensor([[4, 4], [2, 2]])
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    x = torch.randn(1, s, 16, requires_grad=True)
    ref = torch.rand(1, s, 2, 2)
    out = attn(x, ref, x, shapes)
    out.sum().backward()
    assert out.shape == (1, s, 16) and x.grad is not None and torch.isfinite(x.grad).all()
    # a fully padded input has zero values, so the output is the output projection's bias
    mask = torch.ones(1, s, dtype=torch.bool)
    out = attn(x, ref, x, shapes, input_padding_mask=mask)
    torch.testing.assert_close(out, attn.output_proj.bias.expand_as(out))
