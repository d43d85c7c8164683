"""Atomic file writes: a killed job never leaves a half-written output."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import cv2
from iopath.common.file_io import file_lock


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Serialise `obj` as JSON to `path` atomically."""
    atomic_write_bytes(path, json.dumps(obj).encode("utf-8"))


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
