"""Sharded, resumable two-stage pseudo-label pipeline (the CuVLER split: ViTs, then CPU post-processing).

The input list (sorted folder listing or a split's order) is cut into chunks of `chunk_size`
images; chunk k always holds the same images, whatever the sharding, and shard I of N owns a
contiguous block of chunks. The work folder holds

    manifest.json              method, options, chunk size and a hash of the image list
    stage1/chunk_000042.npz    `method.stage1` arrays of chunk 42 (+ image sizes, unreadable files)
    stage2/chunk_000042.json   that chunk's `images`, `annotations`, unreadable files and `failures`

each written atomically, so a rerun skips finished chunks and a killed job loses at most the
chunk it was on. Stage 1 runs in the calling process (GPU when present) on batches of
`batch_size` images while threads decode the next chunk; stage 2 runs `method.stage2` per image
in `workers` processes. `merge` assembles every chunk of every shard into one COCO JSON.
Unreadable images are logged, counted and left out; failures a method recovers from (VoteCut's
CRF) are logged and counted per kind (`Stage2Annotations.failures`); both counts are printed in the
summary and written to the output JSON's `info`. Any other error stops the run.
"""
import collections
import concurrent.futures as futures
import hashlib
import io
import json
import logging
import multiprocessing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from cad.discovery.export import image_entry, normalize_annotation, write_coco_json
from cad.discovery.method import DiscoveryImage, DiscoveryMethod, MethodOptions, build_method, stage2_failures
from cad.discovery.sources import UNREADABLE_IMAGE_ERRORS, ImageRecord, read_rgb, shard_range
from cad.errors import UserError
from cad.utils.io import atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

_META_KEY = "__meta__"


class WorkDirError(UserError, RuntimeError):
    """The work folder does not match this run, or a stage's input is missing."""


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run.

    method: registered method name; options: how to build it (`MethodOptions`).
    work_dir: folder of the per-chunk outputs (shared by all shards).
    chunk_size: images per stored chunk (the unit of resumption); batch_size: images per
    `stage1` call; workers: stage-2 processes (1 = in this process); shard/num_shards: which
    contiguous block of chunks this process runs.
    """

    method: str
    options: MethodOptions
    work_dir: Path
    chunk_size: int = 64
    batch_size: int = 8
    workers: int = 1
    shard: int = 0
    num_shards: int = 1


# What each failure kind of `Stage2Annotations.failures` means, for the summary line.
FAILURE_TEXT = {"crf_failures": "masks kept unrefined after a CRF error"}


@dataclass
class Summary:
    """What a merge produced: counts, the unreadable files that were skipped and the recovered
    failures by kind ({kind: count})."""

    num_images: int = 0
    num_annotations: int = 0
    unreadable: List[Dict] = field(default_factory=list)
    failures: Dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        parts = [
            f"{self.num_images} images",
            f"{self.num_annotations} annotations",
            f"{len(self.unreadable)} unreadable images skipped",
        ]
        parts += [f"{n} {FAILURE_TEXT.get(kind, kind)}" for kind, n in sorted(self.failures.items())]
        return ", ".join(parts)

    def info(self) -> Dict:
        """The COCO `info` block of the output JSON."""
        return {
            "num_images": self.num_images,
            "num_annotations": self.num_annotations,
            "unreadable_images": len(self.unreadable),
            **{kind: n for kind, n in sorted(self.failures.items())},
        }


def _chunks(records: Sequence[ImageRecord], chunk_size: int) -> List[Sequence[ImageRecord]]:
    return [records[i : i + chunk_size] for i in range(0, len(records), chunk_size)]


def _stage1_path(cfg: PipelineConfig, k: int) -> Path:
    return Path(cfg.work_dir) / "stage1" / f"chunk_{k:06d}.npz"


def _stage2_path(cfg: PipelineConfig, k: int) -> Path:
    return Path(cfg.work_dir) / "stage2" / f"chunk_{k:06d}.json"


def _manifest(cfg: PipelineConfig, records: Sequence[ImageRecord]) -> Dict:
    listing = json.dumps([(r.image_id, r.file_name) for r in records]).encode()
    return {
        "method": cfg.method,
        "models": [list(m) for m in cfg.options.models],
        "crf": cfg.options.crf,
        **({"params": [list(p) for p in cfg.options.params]} if cfg.options.params else {}),
        "chunk_size": cfg.chunk_size,
        "num_images": len(records),
        "images_sha1": hashlib.sha1(listing).hexdigest(),
    }


def prepare_work_dir(cfg: PipelineConfig, records: Sequence[ImageRecord]) -> None:
    """Create the work folder's manifest, or check that an existing one describes this run."""
    path = Path(cfg.work_dir) / "manifest.json"
    manifest = _manifest(cfg, records)
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != manifest:
            diff = sorted(k for k in manifest if existing.get(k) != manifest[k])
            raise WorkDirError(
                f"work dir '{cfg.work_dir}' was made by a run with other settings ({', '.join(diff)} differ); "
                "use another --work-dir or delete it"
            )
        return
    atomic_write_json(path, manifest)


def _shard_chunks(cfg: PipelineConfig, num_chunks: int) -> range:
    return shard_range(num_chunks, cfg.shard, cfg.num_shards)


def _try_read(record: ImageRecord) -> Tuple[Optional[np.ndarray], Optional[str]]:
    try:
        return read_rgb(record.path), None
    except UNREADABLE_IMAGE_ERRORS as e:
        return None, f"{type(e).__name__}: {e}"


def _warn_unreadable(record: ImageRecord, error: str) -> Dict:
    logger.warning("Skipping unreadable image '%s' (%s)", record.path, error)
    return {"image_id": record.image_id, "file_name": record.file_name, "error": error}


def _decoded_chunks(
    chunks: Sequence[Tuple[int, Sequence[ImageRecord]]], threads: int
) -> Iterator[Tuple[int, Sequence[ImageRecord], List]]:
    """Yield (k, records, [(image or None, error)]) with the next chunk decoding in the background."""
    with futures.ThreadPoolExecutor(max_workers=threads) as pool:
        pending = collections.deque()
        for k, records in chunks:
            pending.append((k, records, [pool.submit(_try_read, r) for r in records]))
            if len(pending) > 1:
                k0, r0, fs = pending.popleft()
                yield k0, r0, [f.result() for f in fs]
        while pending:
            k0, r0, fs = pending.popleft()
            yield k0, r0, [f.result() for f in fs]


def _save_stage1(path: Path, meta: Dict, arrays: List[Dict[str, np.ndarray]]) -> None:
    flat = {_META_KEY: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for index, per_image in zip((m["index"] for m in meta["images"]), arrays):
        for key, value in per_image.items():
            flat[f"{index}/{key}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    atomic_write_bytes(path, buffer.getvalue())


def load_stage1(path: Path) -> Tuple[Dict, Dict[int, Dict[str, np.ndarray]]]:
    """(meta, {index in chunk: arrays}) of a stage-1 chunk file."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(data[_META_KEY].tobytes().decode())
        arrays: Dict[int, Dict[str, np.ndarray]] = {m["index"]: {} for m in meta["images"]}
        for name in data.files:
            if name != _META_KEY:
                index, key = name.split("/", 1)
                arrays[int(index)][key] = data[name]
    return meta, arrays


def _check_stage1_output(method: str, batch: List[DiscoveryImage], out) -> None:
    if not isinstance(out, list) or len(out) != len(batch) or not all(isinstance(a, dict) for a in out):
        raise TypeError(f"method '{method}': stage1 must return one dict of arrays per image ({len(batch)})")
    for arrays in out:
        for key, value in arrays.items():
            if np.asarray(value).dtype == object:
                raise TypeError(f"method '{method}': stage1 array '{key}' has dtype object; return numeric arrays")


def run_stage1(cfg: PipelineConfig, records: Sequence[ImageRecord], method: Optional[DiscoveryMethod] = None) -> int:
    """Run stage 1 on this shard's unfinished chunks; returns the number of chunks computed."""
    prepare_work_dir(cfg, records)
    chunks = _chunks(records, cfg.chunk_size)
    todo = [(k, chunks[k]) for k in _shard_chunks(cfg, len(chunks)) if not _stage1_path(cfg, k).exists()]
    if not todo:
        return 0
    method = method or build_method(cfg.method, cfg.options)
    # closed (a newline on the terminal) also when a method raises, so an error line starts on its own line
    with tqdm(total=sum(len(c) for _, c in todo), desc=f"{cfg.method} stage 1", unit="img") as bar:
        for k, chunk, decoded in _decoded_chunks(todo, threads=max(2, cfg.workers)):
            meta: Dict = {"images": [], "unreadable": []}
            images: List[DiscoveryImage] = []
            for index, (record, (image, error)) in enumerate(zip(chunk, decoded)):
                if image is None:
                    meta["unreadable"].append(_warn_unreadable(record, error))
                    continue
                h, w = image.shape[:2]
                meta["images"].append({"index": index, **image_entry(record.image_id, record.file_name, h, w)})
                images.append(DiscoveryImage(record.image_id, record.file_name, image))
            arrays: List[Dict[str, np.ndarray]] = []
            for start in range(0, len(images), cfg.batch_size):
                batch = images[start : start + cfg.batch_size]
                out = method.stage1(batch)
                _check_stage1_output(cfg.method, batch, out)
                arrays += out
                bar.update(len(batch))
            bar.update(len(meta["unreadable"]))
            _save_stage1(_stage1_path(cfg, k), meta, arrays)
    return len(todo)


# Stage 2 --------------------------------------------------------------------------------------

_WORKER_METHOD: Optional[DiscoveryMethod] = None


def _init_worker(name: str, options: MethodOptions) -> None:
    global _WORKER_METHOD
    import torch

    torch.set_num_threads(1)
    _WORKER_METHOD = build_method(name, options)


def _stage2_image(
    record: ImageRecord, entry: Dict, arrays: Dict[str, np.ndarray], method: Optional[DiscoveryMethod] = None
) -> Tuple[Optional[List[Dict]], Optional[str], Dict[str, int]]:
    """(annotations, None, failures) for one image, or (None, error, {}) when it cannot be read."""
    method = method or _WORKER_METHOD
    image, error = _try_read(record)
    if image is None:
        return None, error, {}
    if image.shape[:2] != (entry["height"], entry["width"]):
        return None, f"image size changed since stage 1: {image.shape[:2]} vs ({entry['height']}, {entry['width']})", {}
    try:
        anns = method.stage2(DiscoveryImage(record.image_id, record.file_name, image), arrays)
        normalized = [normalize_annotation(a, record.image_id, entry["height"], entry["width"]) for a in anns]
        return normalized, None, stage2_failures(anns)
    except Exception as e:
        raise RuntimeError(f"stage 2 failed on '{record.path}': {type(e).__name__}: {e}") from e


class _InlineExecutor(futures.Executor):
    """`submit` runs the call at once in this process (stage 2 with one worker)."""

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        future: futures.Future = futures.Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _process_pool(cfg: PipelineConfig) -> futures.Executor:
    import torch

    # fork is fastest; a process that has initialised CUDA must spawn its workers instead.
    methods = multiprocessing.get_all_start_methods()
    context = "fork" if "fork" in methods and not torch.cuda.is_initialized() else "spawn"
    options = replace(cfg.options, device="cpu")
    return futures.ProcessPoolExecutor(
        cfg.workers, mp_context=multiprocessing.get_context(context), initializer=_init_worker, initargs=(cfg.method, options)
    )


def run_stage2(cfg: PipelineConfig, records: Sequence[ImageRecord], method: Optional[DiscoveryMethod] = None) -> int:
    """Run stage 2 on this shard's unfinished chunks; returns the number of chunks computed.

    Raises WorkDirError when stage 1 has not produced one of them.
    """
    prepare_work_dir(cfg, records)
    chunks = _chunks(records, cfg.chunk_size)
    todo = [k for k in _shard_chunks(cfg, len(chunks)) if not _stage2_path(cfg, k).exists()]
    missing = [k for k in todo if not _stage1_path(cfg, k).exists()]
    if missing:
        raise WorkDirError(
            f"stage 1 output missing for {len(missing)} chunk(s) (first: {_stage1_path(cfg, missing[0])}); run stage 1 first"
        )
    if not todo:
        return 0
    if cfg.workers > 1:
        pool, method = _process_pool(cfg), None  # each worker builds its own method
    else:
        pool = _InlineExecutor()
        method = method or build_method(cfg.method, cfg.options)
    bar = tqdm(total=sum(len(chunks[k]) for k in todo), desc=f"{cfg.method} stage 2", unit="img")
    in_flight: collections.deque = collections.deque()

    def write_chunk(k: int, meta: Dict, jobs: List) -> None:
        images, annotations, unreadable = [], [], list(meta["unreadable"])
        failures: collections.Counter = collections.Counter()
        for record, entry, job in jobs:
            anns, error, image_failures = job.result()
            if anns is None:
                unreadable.append(_warn_unreadable(record, error))
            else:
                images.append({key: v for key, v in entry.items() if key != "index"})
                annotations += anns
                failures.update(image_failures)
        part = {"images": images, "annotations": annotations, "unreadable": unreadable, "failures": dict(failures)}
        atomic_write_json(_stage2_path(cfg, k), part)
        bar.update(len(jobs) + len(meta["unreadable"]))

    # With worker processes two chunks stay in flight, so the workers are busy while one is written.
    window = 2 if cfg.workers > 1 else 0
    try:
        with pool:
            for k in todo:
                meta, arrays = load_stage1(_stage1_path(cfg, k))
                jobs = []
                for entry in meta["images"]:
                    record = chunks[k][entry["index"]]
                    jobs.append((record, entry, pool.submit(_stage2_image, record, entry, arrays[entry["index"]], method)))
                in_flight.append((k, meta, jobs))
                while len(in_flight) > window:
                    write_chunk(*in_flight.popleft())
            while in_flight:
                write_chunk(*in_flight.popleft())
    finally:
        # After a failure the pool has shut down: keep every chunk whose images all finished.
        for k, meta, jobs in in_flight:
            if all(not job.cancelled() and job.exception() is None for _, _, job in jobs):
                write_chunk(k, meta, jobs)
        bar.close()
    return len(todo)


def stage2_complete(cfg: PipelineConfig, records: Sequence[ImageRecord]) -> bool:
    """True when every chunk of every shard has its stage-2 file."""
    return all(_stage2_path(cfg, k).exists() for k in range(len(_chunks(records, cfg.chunk_size))))


def merge(cfg: PipelineConfig, records: Sequence[ImageRecord], out: Path) -> Summary:
    """Write the COCO JSON of all chunks (all shards) to `out` atomically; returns counts.

    Raises WorkDirError naming the first missing chunk when some shard has not finished stage 2.
    """
    prepare_work_dir(cfg, records)
    num_chunks = len(_chunks(records, cfg.chunk_size))
    missing = [k for k in range(num_chunks) if not _stage2_path(cfg, k).exists()]
    if missing:
        raise WorkDirError(
            f"cannot merge: stage 2 output missing for {len(missing)} of {num_chunks} chunk(s) "
            f"(first: {_stage2_path(cfg, missing[0])}); finish every shard first"
        )
    images, annotations, unreadable = [], [], []
    failures: collections.Counter = collections.Counter()
    for k in range(num_chunks):
        part = json.loads(_stage2_path(cfg, k).read_text())
        images += part["images"]
        annotations += part["annotations"]
        unreadable += part["unreadable"]
        failures.update(part["failures"])
    summary = Summary(len(images), len(annotations), unreadable, dict(failures))
    write_coco_json(out, images, annotations, info=summary.info())
    logger.info("Wrote %s: %s", out, summary.line())
    return summary


def run_pipeline(
    cfg: PipelineConfig, records: Sequence[ImageRecord], out: Path, stages: str = "all"
) -> Optional[Summary]:
    """Run `stages` ("1", "2", "merge" or "all") for this shard.

    "all" runs both stages and then merges when every shard has finished (so with N shards the
    last one to finish writes `out`); returns the merge summary, or None when nothing was merged.
    """
    if stages not in ("1", "2", "merge", "all"):
        raise ValueError(f"unknown stage '{stages}' (1, 2, merge or all)")
    method = None
    if stages in ("1", "all"):
        method = build_method(cfg.method, cfg.options)
        run_stage1(cfg, records, method)
    if stages in ("2", "all"):
        run_stage2(cfg, records, method)
    if stages == "merge" or (stages == "all" and stage2_complete(cfg, records)):
        return merge(cfg, records, out)
    return None

