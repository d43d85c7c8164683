#!/usr/bin/env python
"""Benchmark MaskCut and VoteCut pseudo-mask generation (random-init ViTs at the default sizes).

Prints images/s, the time split (ViT forward, eigensolver, clustering/voting/post-processing,
CRF) and peak memory, next to a straightforward reference-style loop at equal output:

- MaskCut: per image and per cut one dense `scipy.linalg.eigh(D - A, D)` generalized solve on
  CPU, non-batched (CutLER's solver), versus cad's batched LOBPCG `maskcut_patch_masks`;
- VoteCut: CuVLER's dense `torch.linalg.eigh` of L per model versus cad's LOBPCG.

The cut masks of both are compared (same sign rule, see cad/discovery/ncut.py).

    python tools/benchmarks/cuts.py                      # 2 images, 1 reference image (minutes)
    python tools/benchmarks/cuts.py --images 8 --ref-images 2 --method maskcut
"""
import argparse
from typing import List, Tuple

import numpy as np
import scipy.linalg
import torch

from benchlib import PhaseTimer, peak_memory_mb
from cad.backbones.features import extract_features
from cad.backbones.vit import build_vit
from cad.data.synthetic import ShapesSplit, render_image
from cad.discovery.cut_io import fixed_size, vit_batch
from cad.discovery.maskcut import MaskCut, bipartition, mask_iou, maskcut_patch_masks, maskcut_refine
from cad.discovery.ncut import binary_affinity, fiedler_vectors, fix_sign
from cad.discovery.votecut import VoteCut, refine_voted_mask, votecut_masks


def reference_style_cuts(keys: torch.Tensor, grid: Tuple[int, int], n_cuts: int = 3) -> np.ndarray:
    """One image, one scipy generalized `eigh(D - A, D)` per cut, as CutLER's maskcut_forward."""
    keys = keys.cpu()
    painted = np.zeros(keys.shape[0], dtype=bool)
    masks = []
    for cut in range(n_cuts):
        aff = binary_affinity(keys.masked_fill(torch.from_numpy(painted)[:, None], 0.0)[None])[0].numpy()
        deg = np.diag(aff.sum(axis=1))
        _, vecs = scipy.linalg.eigh(deg - aff, deg, subset_by_index=[1, 2])
        vec = fix_sign(torch.from_numpy(vecs[:, :1].T.copy()))[0].numpy()
        mask = bipartition(vec, grid)
        if cut >= 1 and (mask_iou(masks[-1], mask) > 0.5 or mask.mean() <= 0.01):
            mask = np.zeros_like(mask)
        masks.append(mask)
        painted |= mask.ravel()
    return np.stack(masks)


def bench_maskcut(images: List[np.ndarray], ref_images: int, batch: int) -> None:
    method = MaskCut(None)  # dino_vitb8 at 480x480
    method._model = build_vit("dino_vitb8", "random")
    timer = PhaseTimer()
    all_cuts, all_keys = [], []
    for i in range(0, len(images), batch):
        keys, grid = timer("forward", method.features, images[i : i + batch])
        all_cuts.extend(timer("eigensolver+cuts", maskcut_patch_masks, keys, grid))
        all_keys.extend(keys)
    for img, cuts in zip(images, all_cuts):
        timer("post (no CRF)", maskcut_refine, cuts, img, False)
        timer("post + CRF", maskcut_refine, cuts, img, True)
    t = timer.total
    crf = max(t["post + CRF"] - t["post (no CRF)"], 0.0)
    n = len(images)
    ours = t["forward"] + t["eigensolver+cuts"] + t["post + CRF"]
    print(f"\nMaskCut dino_vitb8 480x480 (grid {grid}), {n} images, batch {batch}, random-init weights")
    print(f"  cad:       {n / ours:.3f} images/s  ({ours / n:.2f} s/image)")
    for name in ("forward", "eigensolver+cuts", "post (no CRF)"):
        print(f"    {name:18s} {t[name] / n:7.2f} s/image")
    print(f"    {'CRF':18s} {crf / n:7.2f} s/image")
    print(f"  peak RSS so far: {peak_memory_mb()['peak_rss_mb']:.0f} MB")
    ref = PhaseTimer()
    same = 0
    m = min(ref_images, n)
    for keys, cuts in zip(all_keys[:m], all_cuts[:m]):
        ref_cuts = ref("scipy generalized eigh", reference_style_cuts, keys, grid)
        same += int(np.array_equal(ref_cuts, cuts))
    if m:
        ref_cut = ref.total["scipy generalized eigh"] / m
        ours_cut = t["eigensolver+cuts"] / n
        per_img_ref = t["forward"] / n + ref_cut + t["post + CRF"] / n
        print(f"  reference-style loop ({m} images, 3 scipy generalized solves each): {ref_cut:.2f} s/image for the cuts")
        print(f"    cut masks identical on {same}/{m} images")
        print(f"    speed-up of the cuts: {ref_cut / ours_cut:.1f}x; whole image (same forward/CRF): {per_img_ref / (ours / n):.2f}x")


def bench_votecut(images: List[np.ndarray], ref_images: int, batch: int) -> None:
    method = VoteCut(None)
    method._vits = [build_vit(arch, "random") for arch, _ in method.models]
    timer = PhaseTimer()
    vectors: List[List[np.ndarray]] = []
    feats_cache = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        per_image: List[List[np.ndarray]] = [[] for _ in chunk]
        for (arch, _), vit in zip(method.models, method.vits):
            side = fixed_size(method.resolution, int(vit.patch_embed.patch_size[0]))
            feats = timer("forward", extract_features, vit, vit_batch(chunk, side))
            pf = feats.tokens if arch.startswith("dinov2") else feats.keys
            vecs = timer("eigensolver", fiedler_vectors, pf, generalized=False)
            feats_cache.append((i, pf, feats.grid))
            for j, v in enumerate(vecs.numpy()):
                per_image[j].append(v.reshape(feats.grid))
        vectors.extend(per_image)
    outs = []
    for img, vecs in zip(images, vectors):
        outs.append(timer("clustering+voting+post", votecut_masks, vecs, img, True))
        for voted in outs[-1]:  # the CRF's share: the same refinements with and without it
            timer("refine with CRF", refine_voted_mask, voted.grid_mask, img, True)
            timer("refine without CRF", refine_voted_mask, voted.grid_mask, img, False)
    t = timer.total
    n = len(images)
    ours = t["forward"] + t["eigensolver"] + t["clustering+voting+post"]
    crf = max(t.get("refine with CRF", 0.0) - t.get("refine without CRF", 0.0), 0.0)
    print(f"\nVoteCut, {len(method.models)} models ({', '.join(a for a, _ in method.models)}), {n} images, random-init")
    print(f"  cad:       {n / ours:.3f} images/s  ({ours / n:.2f} s/image), masks per image {[len(o) for o in outs]}")
    for name in ("forward", "eigensolver"):
        print(f"    {name:26s} {t[name] / n:7.2f} s/image")
    print(f"    {'k-means+clustering+voting':26s} {(t['clustering+voting+post'] - crf) / n:7.2f} s/image")
    print(f"    {'CRF':26s} {crf / n:7.2f} s/image")
    print(f"  peak RSS so far: {peak_memory_mb()['peak_rss_mb']:.0f} MB")
    m = min(ref_images, n)
    if m:
        ref = PhaseTimer()
        same = 0
        for img_index in range(m):
            ref_vecs = []
            for start, pf, grid in feats_cache:
                j = img_index - start
                if 0 <= j < pf.shape[0]:
                    v = ref("dense eigh", fiedler_vectors, pf[j : j + 1], generalized=False, solver="eigh")
                    ref_vecs.append(v[0].numpy().reshape(grid))
            a = votecut_masks(ref_vecs, images[img_index], False)
            b = votecut_masks(vectors[img_index], images[img_index], False)
            same += int(len(a) == len(b) and all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b)))
        ref_eig = ref.total["dense eigh"] / m
        print(f"  reference-style dense torch.linalg.eigh per model ({m} images): {ref_eig:.2f} s/image")
        print(f"    VoteCut masks identical on {same}/{m} images; eigensolver speed-up {ref_eig / (t['eigensolver'] / n):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["maskcut", "votecut", "both"], default="both")
    parser.add_argument("--images", type=int, default=2, help="images to process (default 2)")
    parser.add_argument("--ref-images", type=int, default=1, help="images also run through the reference-style loop")
    parser.add_argument("--batch", type=int, default=2, help="images per stage-1 batch")
    parser.add_argument("--size", type=int, default=384, help="side of the generated test images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    split = ShapesSplit("bench", num_images=args.images, seed=0, size=args.size)
    images = [render_image(split, i)[0] for i in range(args.images)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, images {args.size}x{args.size}")
    with torch.no_grad():
        if args.method in ("maskcut", "both"):
            bench_maskcut(images, args.ref_images, args.batch)
        if args.method in ("votecut", "both"):
            bench_votecut(images, args.ref_images, args.batch)


if __name__ == "__main__":
    main()
