"""Atomic file writes: a killed job never leaves a half-written output."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2


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
