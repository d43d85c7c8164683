"""Multi-process launch that also works without CUDA (gloo backend, one process per "GPU")."""
import logging
import os
import sys
from datetime import timedelta
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

from cad.errors import EXIT_USER_ERROR, UserError, error_line

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


class LaunchError(UserError, ValueError):
    """A process layout this machine cannot run (reported as one line by the tools)."""


class WorkerError(UserError):
    """A user error raised in a worker process of `launch` (its one-line message)."""


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_launch(num_gpus_per_machine: int, num_machines: int = 1, dist_url: str = "auto") -> None:
    """Raise `LaunchError` for a layout this machine cannot run: fewer than 1 process or machine;
    with CUDA, more processes than visible CUDA devices; without CUDA, more gloo CPU processes than
    usable cores (each would get less than a core, and the run would crawl rather than fail);
    several machines with `dist_url` "auto" or a loopback address."""
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise LaunchError(f"--num-gpus and --num-machines must be >= 1 (got {num_gpus_per_machine}, {num_machines})")
    if torch.cuda.is_available():
        devices = torch.cuda.device_count()
        if num_gpus_per_machine > devices:
            raise LaunchError(f"--num-gpus {num_gpus_per_machine}, but this machine has {devices} CUDA device(s)")
    else:
        cores = usable_cpus()
        if num_gpus_per_machine > cores:
            raise LaunchError(
                f"--num-gpus {num_gpus_per_machine}: without CUDA that means {num_gpus_per_machine} CPU processes (gloo), "
                f"but this machine has {cores} CPU core(s); use --num-gpus {cores} or fewer"
            )
    if num_machines != 1 and (dist_url == "auto" or any(h in dist_url for h in ("127.0.0.1", "localhost"))):
        raise LaunchError(
            f"--num-machines {num_machines} needs --dist-url tcp://HOST:PORT with HOST the address of machine 0 "
            f"(got '{dist_url}', which other machines cannot reach)"
        )


def dist_backend() -> str:
    """NCCL when CUDA is available, else gloo."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run `main_func(*args)` in `num_gpus_per_machine` processes on each of `num_machines`.

    Same contract as `detectron2.engine.launch`, whose v0.6 hard-codes NCCL: on a machine
    without CUDA the processes use gloo and `--num-gpus N` means N CPU processes. A user error
    (`cad.errors.UserError`) in a worker process ends it with `EXIT_USER_ERROR` and no traceback,
    and is raised here again as a `WorkerError` with the same one-line message.
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise LaunchError("--dist-url auto works on one machine only; pass --dist-url tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_gpus_per_machine == 1:
        # One process per machine (e.g. a submitit task per node with one GPU): train in this
        # process, so a preemption signal reaches the training loop itself.
        _worker(0, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout)
        return
    # A user error in a worker comes back here through this queue and is raised again, so the tool
    # prints its one line (the worker exits with EXIT_USER_ERROR, without a traceback).
    user_errors = mp.get_context("spawn").SimpleQueue()
    worker_args = (main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout, user_errors)
    context = mp.start_processes(_worker, nprocs=num_gpus_per_machine, args=worker_args, daemon=False,
                                 start_method="spawn", join=False)
    # torch logs "Terminating process N" when it stops the other workers; after a user error that
    # is expected, and the user sees the error's one line only.
    def quiet(record: logging.LogRecord) -> bool:
        return user_errors.empty()

    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    spawn_logger.addFilter(quiet)
    try:
        while not context.join():
            pass
    except BaseException:
        # e.g. submitit's requeue (SystemExit) on preemption: stop the workers with us, so none
        # keeps training (and writing checkpoints) next to the requeued job.
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        if not user_errors.empty():
            raise WorkerError(user_errors.get()) from None
        raise
    finally:
        spawn_logger.removeFilter(quiet)


def _worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout, user_errors=None):
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    backend = dist_backend()
    if backend == "nccl":
        if num_gpus_per_machine > torch.cuda.device_count():
            raise RuntimeError(f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} GPUs visible")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout)
    # Detectron2's comm helpers need the group of the ranks on this machine.
    for i in range(world_size // num_gpus_per_machine):
        group = dist.new_group(list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    except UserError as e:
        if user_errors is None:  # this process is the launcher: the tool reports it
            raise
        user_errors.put(error_line(e))
        sys.exit(EXIT_USER_ERROR)
    finally:
        dist.destroy_process_group()
