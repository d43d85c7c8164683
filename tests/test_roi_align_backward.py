"""The multi-threaded CPU RoIAlign backward gives torchvision's gradient, and training uses it."""
import argparse

import pytest
import torch
from detectron2.layers import ROIAlign
from torchvision.ops import roi_align

from cad.modeling.roi_align import ROIAlignThreadedBackward, roi_align_input_grad, use_threaded_roi_align_backward
from conftest import TINY_CONFIG, TINY_OPTS
from tool_runner import call_forked


def _rois(n: int, batch: int, size: float, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size * 0.8
    wh = torch.rand(n, 2, generator=generator) * size * 0.5 + 1
    rois = torch.cat([torch.randint(0, batch, (n, 1), generator=generator).float(), xy, xy + wh], 1)
    # Boxes past the image borders, a degenerate box and a one-pixel box (the kernel's edge cases).
    rois[:3] = torch.tensor([[0, -10.0, -10, size + 20, size + 20], [1, 40, 40, 40, 40], [0, size - 1, size - 1, size, size]])
    return rois


@pytest.mark.parametrize("sampling_ratio,aligned", [(0, True), (2, True), (0, False)])
@pytest.mark.parametrize("chunks", [2, 3])
def test_chunked_gradient_equals_torchvision(sampling_ratio, aligned, chunks):
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 8, 24, 20, generator=g, requires_grad=True)
    rois = _rois(37, 2, 80.0, g)
    out = roi_align(feat, rois, (7, 7), 0.25, sampling_ratio, aligned)
    grad_out = torch.randn(out.shape, generator=g)
    (expected,) = torch.autograd.grad(out, feat, grad_out)
    got = roi_align_input_grad(grad_out, rois, tuple(feat.shape), 0.25, sampling_ratio, aligned, chunks)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _outputs_and_grads_with_two_threads():
    """(output, input gradient) of Detectron2's ROIAlign and of the threaded backward, on 2 threads."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(1)
    rois = _rois(50, 3, 64.0, g)
    feat = torch.randn(3, 4, 16, 16, generator=g)
    grads = []
    for cls in (ROIAlign, ROIAlignThreadedBackward):
        x = feat.clone().requires_grad_(True)
        out = cls((14, 14), 0.25, 0, True)(x, rois)
        (out * torch.arange(out.numel()).reshape(out.shape).sin()).sum().backward()
        grads.append((out.detach(), x.grad))
    return grads


def test_module_matches_detectron2_roialign():
    grads = call_forked(_outputs_and_grads_with_two_threads)  # threads in a fork: tool_runner
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=1e-5)


def test_training_model_uses_it():
    from cad.engine.setup import build_cfg
    from cad.engine.trainer import CadTrainer

    cfg = build_cfg(argparse.Namespace(config_file=str(TINY_CONFIG), opts=list(TINY_OPTS)))
    model = CadTrainer.build_model(cfg)
    poolers = [m for m in model.modules() if isinstance(m, ROIAlign)]
    assert len(poolers) == 8 and not any(isinstance(m, ROIAlignThreadedBackward) for m in poolers)
    assert use_threaded_roi_align_backward(model) == 8  # box and mask poolers, 4 FPN levels each
    assert all(type(m) is ROIAlignThreadedBackward for m in poolers)
    assert use_threaded_roi_align_backward(model) == 0
    model, _ = CadTrainer.build_training(cfg)
    assert sum(type(m) is ROIAlignThreadedBackward for m in model.modules()) == 8
