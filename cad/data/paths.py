"""Where datasets live, and the one error raised when a split is missing."""
import os
from pathlib import Path

from cad.errors import UserError

README = "datasets/README.md"


class DatasetMissingError(UserError, FileNotFoundError):
    """A registered split whose files are not on disk."""


def datasets_root() -> Path:
    """Root of all predefined splits: `$DETECTRON2_DATASETS`, default `./datasets`."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()


def require(path: Path, split: str, section: str) -> Path:
    """Return `path` if it exists, else raise one clear `DatasetMissingError`.

    The message names the split, the expected path, `$DETECTRON2_DATASETS` and the section of
    datasets/README.md that explains the layout.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetMissingError(
            f"dataset '{split}': expected '{path}' but it does not exist "
            f"(dataset root = $DETECTRON2_DATASETS = '{datasets_root()}'); "
            f"see {README}, section '{section}'"
        )
    return path
