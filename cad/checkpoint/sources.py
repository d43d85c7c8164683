"""Where a weights file comes from: a path, a URL, or the official file of an architecture.

`weights_file(source, official_url)` returns a local file for every weights option:

- a path (`~` expanded) is used as it is; a missing one is a `WeightsNotFoundError`;
- an `http(s)://` URL, or `detectron2://NAME` (Detectron2's model zoo,
  https://dl.fbaipublicfiles.com/detectron2/NAME), is downloaded once into the cache and read
  from there afterwards (no second request);
- "" or None means `official_url`, the official file of the architecture (e.g. DINO's ViT-S/16),
  downloaded the same way; without one it is an error;
- any other `scheme://` goes to Detectron2's `PathManager` (its registered handlers).

Caches: DINO/DINOv2 ViT files (`torch_hub=True`) go where `torch.hub.load_state_dict_from_url`
puts them, `$TORCH_HOME/hub/checkpoints/<file name>`, so files the official LOST / CutLER / CuVLER /
Guided Distillation code downloaded are reused; everything else goes to Detectron2's download cache
(`$FVCORE_CACHE`, default `~/.torch/iopath_cache`, laid out as Detectron2's `PathManager` lays it
out: `<cache>/<URL path>`), so the two share files too.

A download shows a tqdm progress bar (on a terminal), is written to a temporary file next to its
target and renamed when complete — a download that fails or is killed never leaves a file that
a later run would read — and is checked against the server's Content-Length. Processes of one
machine that need the same file wait for the first one's download (a lock in the temp folder).
Network failures (HTTP error, refused connection, timeout, a download cut short) are one-line
`DownloadError`s that name the URL.

Offline mode: with the environment variable `CAD_OFFLINE=1` nothing is downloaded; a file that is
not in the cache is one line naming the URL and the cache path to put it in by hand.
"""
import contextlib
import hashlib
import http.client
import logging
import os
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

import torch
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import file_lock, get_cache_dir
from tqdm import tqdm

from cad.checkpoint.errors import DownloadError, WeightsNotFoundError

logger = logging.getLogger(__name__)

__all__ = ["OFFLINE_ENV", "DETECTRON2_PREFIX", "cache_path", "download", "is_url", "offline", "weights_file"]

# "1" (or "true", "yes"): never download; a missing cached file is an error naming URL and path.
OFFLINE_ENV = "CAD_OFFLINE"
# Detectron2's model-zoo scheme and the URL it stands for (detectron2/utils/file_io.py).
DETECTRON2_PREFIX = "detectron2://"
_DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
# Seconds a connection or a read may stall before the download fails.
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def is_url(source: str) -> bool:
    return "://" in source


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes")


def _http_url(source: str) -> Optional[str]:
    """The http(s) URL of `source` (a `detectron2://` name expanded), else None."""
    if source.startswith(DETECTRON2_PREFIX):
        return _DETECTRON2_URL + source[len(DETECTRON2_PREFIX):]
    return source if source.startswith(("http://", "https://")) else None


def cache_path(url: str, torch_hub: bool = False) -> Path:
    """Where the download of `url` is kept: torch.hub's checkpoint folder (`torch_hub`, ViT files)
    or Detectron2's cache (module docstring)."""
    parsed = urllib.parse.urlparse(url)
    name = parsed.path.rsplit("/", 1)[-1] or "download"
    if torch_hub:
        return Path(torch.hub.get_dir()) / "checkpoints" / name
    return Path(get_cache_dir()) / os.path.dirname(parsed.path.lstrip("/")) / name


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    reason = getattr(e, "reason", e)  # URLError wraps the socket's error
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {TIMEOUT_S:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def download(url: str, dst: Path) -> Path:
    """Download `url` to `dst` atomically (temporary file in the same folder, then rename), with a
    progress bar; raises `DownloadError` (no file left behind) on any network failure."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
    except OSError as e:
        raise DownloadError(f"cannot download {url}: cannot write to '{dst.parent}' ({e.strerror})") from None
    logger.info("Downloading %s to %s", url, dst)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dst.name, disable=None) as bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(f"download of {url} cut short: {received} of {total} bytes received")
        os.replace(tmp, dst)
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:  # HTTP errors, refused, timeouts, resets
        raise DownloadError(f"cannot download {url}: {_reason(e)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def _cached(url: str, torch_hub: bool, label: str) -> Path:
    """The cached file of `url`, downloaded first when absent (unless offline)."""
    path = cache_path(url, torch_hub)
    if path.is_file():
        return path
    if offline():
        raise WeightsNotFoundError(
            f"{OFFLINE_ENV} is set (offline) and {url}{label} is not in the cache: download it by hand to '{path}'"
        )
    lock = os.path.join(tempfile.gettempdir(), "cad-downloads", hashlib.sha1(str(path).encode()).hexdigest())
    try:
        with file_lock(lock):  # other processes of this machine wait for this download
            if not path.is_file():
                download(url, path)
    finally:  # the atomic rename keeps a later race harmless: at worst two downloads of one file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock + ".lock")
    return path


def weights_file(source: Optional[str], official_url: str = "", *, torch_hub: bool = False, option: str = "") -> str:
    """The local file of the weights source `source` (module docstring): a path, a URL (downloaded
    once into the cache) or ""/None for `official_url`. `torch_hub` puts downloads in torch.hub's
    checkpoint folder (DINO/DINOv2 ViT files) instead of Detectron2's cache. `option` names the
    setting or the model in error messages (e.g. "CAD.VIT.WEIGHTS", "dino_vits16"). Raises
    `WeightsNotFoundError` or `DownloadError` (one line)."""
    source = str(source or "").strip()
    label = f" ({option})" if option else ""
    if not source:
        if not official_url:
            raise WeightsNotFoundError(f"no weights given{label} and no official file to fall back to: give a path or a URL")
        source = official_url
    url = _http_url(source)
    if url is not None:
        return str(_cached(url, torch_hub, label))
    if is_url(source):
        local = PathManager.get_local_path(source)
        if not os.path.isfile(local):
            raise WeightsNotFoundError(f"weights '{source}'{label}: no file there (a path, http(s):// or {DETECTRON2_PREFIX})")
        return local
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file '{path}'{label} does not exist")
    return str(path)
