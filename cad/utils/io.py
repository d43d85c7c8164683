"""Atomic file writes: a killed job never leaves a half-written output."""
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import cv2
import numpy as np
from iopath.common.file_io import file_lock

from cad.errors import UserError


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(f)` into a temporary file in `path`'s folder, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Serialise `obj` as JSON to `path` atomically."""
    atomic_write_bytes(path, json.dumps(obj).encode("utf-8"))


def atomic_write_npz(path: Path, **arrays) -> None:
    """Write numpy arrays to a compressed `.npz` at `path` atomically (`np.savez_compressed`)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_png(path: Path, rgb) -> None:
    """Write an RGB uint8 array (H, W, 3) as a PNG, atomically."""
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, png.tobytes())


def write_once(path: Path, write: Callable[[], None]) -> Path:
    """Run `write()` unless `path` exists, under a file lock; return `path`.

    For generated data whose last, atomic write is `path` (images first, index JSON last): an
    existing `path` means complete data, and several processes may ask for it at once.
    """
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(str(path)):
        if not path.exists():
            write()
    return path


class InputFileError(UserError, ValueError):
    """An input file that is missing, unreadable or not what it should be (one line for the user)."""


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON file `path`; `InputFileError` naming `what` (e.g. "--gt") and the file when
    it cannot be read or is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise InputFileError(f"cannot read {what} '{path}': {e.strerror}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        reason = f"{e.msg} at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not text"
        raise InputFileError(f"{what} '{path}' is not JSON ({reason})") from e


def read_coco_results(path: Path, what: str) -> Any:
    """`read_json`, and `InputFileError` unless the file is a COCO results list or a COCO JSON
    with `annotations` (predictions or pseudo-labels)."""
    data = read_json(path, what)
    if not (isinstance(data, list) or (isinstance(data, dict) and "annotations" in data)):
        raise InputFileError(f"{what} '{path}' is neither a COCO file with 'annotations' nor a COCO results list")
    return data

