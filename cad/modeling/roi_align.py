"""RoIAlign with a CPU backward that uses every intra-op thread.

torchvision's CPU `roi_align` backward is one loop over all RoIs on one thread, a sizeable part of
a CPU-trained Mask R-CNN's step (docs/benchmarks.md, "make demo and the detector training step").
Its gradient is a sum over RoIs, so this backward splits the RoIs into one chunk per thread, runs
torchvision's own backward kernel on each chunk in parallel (the op releases the GIL) and adds the
partial gradients. The forward and the CUDA path are torchvision's, unchanged.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import torch
from detectron2.layers import ROIAlign
from torch import nn

logger = logging.getLogger(__name__)

_pool: Optional[ThreadPoolExecutor] = None


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there, so start a new pool."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < workers:
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cad-roi-align")
    return _pool


def roi_align_input_grad(grad: torch.Tensor, rois: torch.Tensor, input_shape: Tuple[int, int, int, int],
                         spatial_scale: float, sampling_ratio: int, aligned: bool, chunks: int) -> torch.Tensor:
    """Gradient of `torchvision.ops.roi_align` w.r.t. its input, computed over `chunks` RoI chunks.

    grad: [R, C, PH, PW] (gradient of the pooled output); rois: [R, 5] (batch index, x0, y0, x1, y1);
    input_shape: (B, C, H, W). Returns [B, C, H, W], equal to torchvision's backward up to the order
    of the float additions.
    """
    b, c, h, w = input_shape
    ph, pw = grad.shape[-2:]
    kernel = torch.ops.torchvision._roi_align_backward

    def one(part: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        g, r = part
        return kernel(g.contiguous(), r.contiguous(), spatial_scale, ph, pw, b, c, h, w, sampling_ratio, aligned)

    chunks = max(1, min(chunks, len(rois)))
    parts = list(zip(grad.tensor_split(chunks), rois.tensor_split(chunks)))
    if chunks == 1:
        return one(parts[0])
    results = list(_thread_pool(chunks).map(one, parts))
    total = results[0]
    for r in results[1:]:
        total.add_(r)
    return total


class _RoIAlignChunkedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.args = (tuple(input.shape), spatial_scale, sampling_ratio, aligned)
        return torch.ops.torchvision.roi_align(input, rois, spatial_scale, output_size[0], output_size[1],
                                               sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        shape, spatial_scale, sampling_ratio, aligned = ctx.args
        grad_input = roi_align_input_grad(grad, rois, shape, spatial_scale, sampling_ratio, aligned,
                                          chunks=torch.get_num_threads())
        return grad_input, None, None, None, None, None


class ROIAlignThreadedBackward(ROIAlign):
    """Detectron2's `ROIAlign`; on CPU with more than one thread its backward is `roi_align_input_grad`."""

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if input.is_cuda or input.is_quantized or torch.get_num_threads() == 1 or not (
                torch.is_grad_enabled() and input.requires_grad):
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size,) * 2
        return _RoIAlignChunkedBackward.apply(input, rois.to(dtype=input.dtype), tuple(size), self.spatial_scale,
                                              self.sampling_ratio, self.aligned)


def use_threaded_roi_align_backward(model: nn.Module) -> int:
    """Turn every Detectron2 `ROIAlign` in `model` into `ROIAlignThreadedBackward` in place (same
    parameters, same outputs); returns how many were changed."""
    changed = 0
    for module in model.modules():
        if type(module) is ROIAlign:
            module.__class__ = ROIAlignThreadedBackward
            changed += 1
    if changed:
        logger.info("RoIAlign: %d poolers use the multi-threaded CPU backward", changed)
    return changed
