"""Run a `tools/*.py` script as its own process, forked from the test process.

A new interpreter spends about 4 s importing torch, Detectron2 and cad before a tool does anything,
and the suite runs tools ~100 times. A fork of the test process starts with those modules
imported; the child is otherwise set up as a fresh `python tools/X.py ARGS` would be: argv, cwd,
`sys.path[0]` = the script's folder, fd 1/2 (and `sys.stdout`/`sys.stderr`) on files of its own,
logging without handlers (Detectron2's `setup_logger` cache cleared), Python's default warning
filters, and `os._exit` with the script's exit status (no atexit hook of the test process runs).

Forking is only safe while this process never ran torch with more than one intra-op thread (a
GNU OpenMP thread pool does not survive `fork` and the child would hang): `fork_safe()` says
whether that holds; `conftest.run_tool` falls back to a new interpreter otherwise. A test that
needs several threads runs them in a fork (`call_forked`), which keeps this process single-threaded.
"""
import io
import logging
import os
import pickle
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

_set_num_threads = torch.set_num_threads
_max_threads = [torch.get_num_threads()]


def _tracked_set_num_threads(n: int) -> None:
    _max_threads[0] = max(_max_threads[0], int(n))
    _set_num_threads(n)


def track_threads() -> None:
    """Record every `torch.set_num_threads` of this process from now on (call it first thing)."""
    _max_threads[0] = torch.get_num_threads()
    torch.set_num_threads = _tracked_set_num_threads


def fork_safe() -> bool:
    return hasattr(os, "fork") and torch.set_num_threads is _tracked_set_num_threads and _max_threads[0] <= 1


def _fresh_process_state(script: Path, args: Sequence[str], cwd: Path) -> None:
    """In the child: what a new interpreter running `script` would have (module docstring)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), line_buffering=True))
    for logger in [logging.getLogger()] + [x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)]:
        logger.handlers.clear()
        logger.setLevel(logging.WARNING if logger is logging.getLogger() else logging.NOTSET)
        logger.propagate, logger.disabled = True, False
    from detectron2.utils.logger import setup_logger

    setup_logger.cache_clear()
    warnings.resetwarnings()
    for action, category in (("ignore", DeprecationWarning), ("ignore", PendingDeprecationWarning),
                             ("ignore", ImportWarning), ("ignore", ResourceWarning)):
        warnings.simplefilter(action, category)
    warnings.showwarning = warnings._showwarning_orig
    warnings._showwarnmsg_impl = lambda msg: sys.stderr.write(warnings._formatwarnmsg(msg))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(cwd)
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))


def _child(script: Path, args: Sequence[str], cwd: Path, out: int, err: int, prepare: Optional[Callable[[], None]]) -> None:
    code = 1
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        _fresh_process_state(script, args, cwd)
        try:
            if prepare is not None:
                prepare()
            runpy.run_path(str(script), run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001  an uncaught error: its traceback, status 1, as Python
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_forked(script: Path, args: Sequence[str], cwd: Path, timeout: float,
               prepare: Optional[Callable[[], None]] = None) -> subprocess.CompletedProcess:
    """`python script ARGS` in `cwd` as a fork of this process; a `CompletedProcess` with text output
    (a child killed by signal S has returncode -S). `prepare()` runs in the child just before the
    script (e.g. to patch a class). Raises `subprocess.TimeoutExpired` (after killing the child)
    past `timeout` seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(script, args, cwd, out.fileno(), err.fileno(), prepare)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired([sys.executable, str(script), *args], timeout)
            time.sleep(0.01)
        code = os.waitstatus_to_exitcode(status)
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", errors="replace"))
    return subprocess.CompletedProcess([sys.executable, str(script), *args], code, texts[0], texts[1])


def call_forked(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a fork of this process: its (picklable) result, or its exception raised here."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            try:
                payload = pickle.dumps((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001  sent to the test process, raised there
                payload = pickle.dumps((False, e))
            with os.fdopen(write, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value
