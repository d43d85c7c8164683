"""--slurm through submitit: multi-node rendezvous, and a real 2-task run with submitit's local
executor that is preempted and requeued, and resumes from its last checkpoint."""
import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import cad.engine.slurm as slurm
from cad.engine.cli import train_argument_parser
from conftest import TINY_CONFIG, TINY_OPTS


def _children(pid: int):
    """Process ids whose parent is `pid` (the submitit tasks of a local job's controller)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _slurm_args(tmp_path, *flags, opts=()):
    return train_argument_parser().parse_args(
        ["--config-file", str(TINY_CONFIG), "--slurm", "--job-dir", str(tmp_path / "jobs"), *flags, *TINY_OPTS, *opts]
    )


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_each_node_joins_the_first_nodes_rendezvous(tmp_path, monkeypatch, rank):
    """--nodes 3 --num-gpus 8: task `rank` launches 8 processes as machine `rank` of 3, all
    meeting at the first node on a port derived from the job id."""
    env = SimpleNamespace(num_tasks=3, global_rank=rank, hostnames=["gpu-a", "gpu-b", "gpu-c"], job_id="4242")
    monkeypatch.setattr(slurm.submitit, "JobEnvironment", lambda: env)
    calls = []
    monkeypatch.setattr(slurm, "launch", lambda *a, **kw: calls.append((a, kw)))
    args = _slurm_args(tmp_path, "--nodes", "3", "--num-gpus", "8")
    slurm.TrainJob(print, args)()
    (main, gpus, machines, machine_rank, url), kw = calls[0]
    assert (gpus, machines, machine_rank) == (8, 3, rank)
    assert url == f"tcp://gpu-a:{slurm._dist_port('4242')}" and kw["args"][0].machine_rank == rank


def test_local_executor_two_tasks_preempted_requeued_resumes(tmp_path):
    """Two submitit tasks (2 gloo processes) train; a preemption signal makes submitit call
    TrainJob.checkpoint, requeue the job with --resume, and training continues from the last
    checkpoint's iteration, not from 0."""
    from cad.engine.train import main

    args = _slurm_args(tmp_path, "--slurm-cluster", "local", "--tasks-per-node", "2", "--timeout", "15",
                       opts=["SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "1", "DATASETS.TEST", "()"])
    job = slurm.submit(main, args)
    out = tmp_path / "jobs" / "output"
    try:
        deadline = time.time() + 400
        while not (out / "model_0000001.pth").exists():
            assert time.time() < deadline and not job.done(), "no checkpoint written"
            time.sleep(0.5)
        for pid in _children(job._process.pid):  # SLURM signals every task of a preempted job
            os.kill(pid, signal.SIGUSR2)
        job.results()
    finally:
        job.cancel(check=False)
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log
    starts = [int(i) for i in re.findall(r"Starting training from iteration (\d+)", log)]
    assert starts[0] == 0 and len(starts) == 2 and starts[1] >= 2, starts
    assert (out / "model_final.pth").exists()
