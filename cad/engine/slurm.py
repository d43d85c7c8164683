"""Submit `tools/train_net.py` runs through submitit (SLURM, or its local/debug executors).

One submitit task per node; each task launches `--num-gpus` processes, so a job of K nodes
trains on K×G processes. The rendezvous address is the first node of the job. On preemption
or timeout submitit calls `checkpoint()`, which requeues the same run with `--resume`, so it
continues from `OUTPUT_DIR/last_checkpoint` instead of iteration 0. A user error (bad weights, a
missing dataset, ...) in a task is one line `error: ...` in its log and exit status 2.
"""
import argparse
import copy
import logging
import os
import zlib
from typing import Callable

import submitit

from cad.engine.launch import launch
from cad.errors import UserError, exit_in_task

logger = logging.getLogger(__name__)


def _dist_port(job_id: str) -> int:
    """A port in [20000, 40000) that every task of a job derives from the same job id."""
    return 20000 + zlib.crc32(str(job_id).encode()) % 20000


class TrainJob(submitit.helpers.Checkpointable):
    """The callable submitted to the cluster: `main(args)` on all processes of the job."""

    def __init__(self, main: Callable, args: argparse.Namespace):
        self.main = main
        self.args = args

    def __call__(self):
        env = submitit.JobEnvironment()
        args = copy.deepcopy(self.args)
        args.num_machines = env.num_tasks
        args.machine_rank = env.global_rank
        args.dist_url = f"tcp://{env.hostnames[0]}:{_dist_port(env.job_id)}"
        if env.num_tasks == 1 and args.num_gpus == 1:
            args.dist_url = "auto"
        logger.info("submitit task %d/%d, dist_url %s", env.global_rank, env.num_tasks, args.dist_url)
        try:
            launch(self.main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))
        except UserError as e:  # one line in the task's log, status 2, no traceback
            exit_in_task(e)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue on preemption/timeout, resuming from the last checkpoint."""
        resumed = copy.deepcopy(self.args)
        resumed.resume = True
        logger.info("Requeuing with --resume")
        return submitit.helpers.DelayedSubmission(TrainJob(self.main, resumed))


def build_executor(args: argparse.Namespace) -> submitit.AutoExecutor:
    """An executor for `args`: nodes, GPUs per node, partition, timeout, job folder."""
    executor = submitit.AutoExecutor(folder=os.path.join(args.job_dir, "%j"), cluster=args.slurm_cluster)
    executor.update_parameters(
        name=args.job_name,
        timeout_min=args.timeout,
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        slurm_partition=args.partition,
        slurm_gpus_per_node=args.num_gpus,
        slurm_signal_delay_s=120,
    )
    return executor


def submit(main: Callable, args: argparse.Namespace) -> submitit.Job:
    """Submit the run; OUTPUT_DIR defaults to the job folder so requeued jobs find checkpoints."""
    args = copy.deepcopy(args)
    if "OUTPUT_DIR" not in args.opts[::2]:
        args.opts = list(args.opts) + ["OUTPUT_DIR", os.path.join(args.job_dir, "output")]
    job = build_executor(args).submit(TrainJob(main, args))
    logger.info("Submitted job %s (logs in %s)", job.job_id, args.job_dir)
    return job
