"""The one family of user errors and how every tool reports them.

A user error is bad input that the user can fix — a config key, a dataset path, a weights file or
URL, a process layout. Every such exception derives from `UserError` (`cad.config.ConfigError`
and `cad.checkpoint.CheckpointError` are subclasses); each tool prints it as one line
`error: <message>` on stderr and exits with status 2 (`report`), also when it was raised in a
process of `--num-gpus N` (`cad.engine.launch` passes it to the parent) or in a SLURM task
(`exit_in_task`). Anything else is a bug and keeps its traceback.

This module imports nothing from cad, so every package can use it.
"""
import sys

__all__ = ["EXIT_USER_ERROR", "UserError", "error_line", "exit_in_task", "report"]

# Exit status of a tool (or a worker process, or a SLURM task) stopped by a user error.
EXIT_USER_ERROR = 2


class UserError(Exception):
    """Input the user can fix; reported as one line `error: <message>`, exit status 2."""


def error_line(e: BaseException) -> str:
    """The one-line message of `e`. An error re-raised from a DataLoader worker carries the
    worker's traceback ("Caught X in DataLoader worker process N. Original Traceback ..."), whose
    last line is `module.X: message`: then only that message."""
    text = str(e).strip()
    if "\nOriginal Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def report(e: BaseException) -> int:
    """Print `e` as the tools do (`error: <message>` on stderr); returns `EXIT_USER_ERROR`."""
    print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def exit_in_task(e: UserError) -> None:
    """In a SLURM task: report `e` in the task's log and end the task with status 2, so the job is
    marked failed without a Python traceback (submitit records one for any exception)."""
    report(e)
    raise SystemExit(EXIT_USER_ERROR)
