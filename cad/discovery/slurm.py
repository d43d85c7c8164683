"""`tools/discover.py --slurm`: the pipeline as submitit job arrays.

Stage 1 runs as an array of `--shards` tasks on GPU nodes, stage 2 as an array on CPU nodes
(`--workers` CPUs each), then one merge job. On SLURM the arrays are chained with
`--dependency=afterok` and the command returns at once; the local/debug executors run them
on this machine in order and wait. Each task is `tools/discover.py ... --shard I/N --stage S`,
and a preempted or timed-out task is requeued as is: the work folder makes it skip the chunks
it already finished. A task stopped by a user error prints its one line `error: ...` in its log
and ends with status 2 (no traceback).
"""
import argparse
import logging
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import submitit
from submitit.core.utils import UncompletedJobError

from cad.discovery.pipeline import PipelineConfig
from cad.errors import UserError

logger = logging.getLogger(__name__)


class ShardJob(submitit.helpers.Checkpointable):
    """Runs `entry(ARGV)` (the `tools/discover.py` entry point, `cad.discovery.cli.run`, passed in
    by the caller) in the job; `checkpoint` (inherited) resubmits the same ARGV."""

    def __init__(self, entry: Callable[[List[str]], int]) -> None:
        self.entry = entry

    def __call__(self, argv: List[str]) -> int:
        status = self.entry(argv)
        if status != 0:  # the entry point printed its one-line error: end the task with its status
            raise SystemExit(status)
        return status


def shard_argv(args: argparse.Namespace, cfg: PipelineConfig, stage: str, shard: int, num_shards: int) -> List[str]:
    """The `tools/discover.py` arguments of one task (no SLURM options; stage 1 keeps --device)."""
    argv = [args.method, "--out", str(args.out), "--work-dir", str(cfg.work_dir), "--stage", stage,
            "--shard", f"{shard}/{num_shards}", "--workers", str(args.workers),
            "--chunk-size", str(args.chunk_size), "--batch-size", str(args.batch_size)]
    argv += ["--images", str(args.images)] if args.images else ["--dataset", args.dataset]
    for flag, value in (("--arch", args.arch), ("--weights", args.weights), ("--models", args.models)):
        if value:
            argv += [flag, value]
    if args.no_crf:
        argv.append("--no-crf")
    if stage == "1" and args.device:
        argv += ["--device", args.device]
    return argv


def _executor(args: argparse.Namespace, name: str, partition: str, cpus: int, gpu: bool, after: Optional[Sequence[submitit.Job]]):
    executor = submitit.AutoExecutor(folder=Path(args.job_dir) / "%j", cluster=args.slurm_cluster)
    extra = {"dependency": "afterok:" + ":".join(sorted({j.job_id.split("_")[0] for j in after}))} if after else {}
    executor.update_parameters(
        name=name,
        timeout_min=args.timeout,
        cpus_per_task=cpus,
        slurm_partition=partition or None,
        slurm_array_parallelism=args.array_parallelism,
        slurm_additional_parameters=extra,
        **({"slurm_gpus_per_node": 1} if gpu else {}),
    )
    return executor


class TaskError(UserError):
    """A task of the job arrays stopped by a user error (its one-line message, its log)."""


def _wait(jobs: Sequence[submitit.Job]) -> None:
    """Wait for `jobs` (local/debug executors). A task that ended with a user error (status 2, its
    `error: ...` line in its log) is a `TaskError` here; other failures keep submitit's error."""
    for job in jobs:
        try:
            job.result()
        except UncompletedJobError:
            lines = [line for line in (job.stderr() or "").splitlines() if line.startswith("error: ")]
            if not lines:
                raise
            raise TaskError(f"{lines[-1][len('error: '):]} (task {job.job_id}, log {job.paths.stderr})") from None


def submit_arrays(args: argparse.Namespace, cfg: PipelineConfig, entry: Callable[[List[str]], int]) -> str:
    """Submit stage 1, stage 2 and merge, each task running `entry(argv)`; returns a one-line
    description for the user."""
    n = args.shards
    gpu = args.device is None or args.device.startswith("cuda")
    chained = submitit.AutoExecutor(folder=Path(args.job_dir) / "%j", cluster=args.slurm_cluster).cluster == "slurm"
    cpu_partition = args.cpu_partition or args.partition
    name = f"discover-{args.method}"

    ex1 = _executor(args, f"{name}-stage1", args.partition, max(2, args.workers), gpu, None)
    stage1 = ex1.map_array(ShardJob(entry), [shard_argv(args, cfg, "1", i, n) for i in range(n)])
    if not chained:
        _wait(stage1)
    ex2 = _executor(args, f"{name}-stage2", cpu_partition, args.workers, False, stage1 if chained else None)
    stage2 = ex2.map_array(ShardJob(entry), [shard_argv(args, cfg, "2", i, n) for i in range(n)])
    if not chained:
        _wait(stage2)
    ex3 = _executor(args, f"{name}-merge", cpu_partition, 1, False, stage2 if chained else None)
    merge = ex3.submit(ShardJob(entry), shard_argv(args, cfg, "merge", 0, 1))
    if not chained:
        _wait([merge])
        return f"job arrays finished ({n} shards); wrote {args.out} (logs in {args.job_dir})"
    return (f"submitted stage 1 array {stage1[0].job_id.split('_')[0]}, stage 2 array "
            f"{stage2[0].job_id.split('_')[0]}, merge job {merge.job_id}; logs in {args.job_dir}")
