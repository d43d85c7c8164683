"""The user errors of reading and loading weights (one line each; `cad.errors.UserError` family)."""
from cad.config import ConfigError

__all__ = ["CheckpointError", "DownloadError", "WeightsNotFoundError"]


class CheckpointError(ConfigError):
    """A weights source that cannot be read, has an unknown layout or does not fit the model."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """A weights path that does not exist, or an official file that offline mode may not download."""


class DownloadError(CheckpointError):
    """A weights URL that could not be downloaded (HTTP error, refused, timeout, cut short)."""
