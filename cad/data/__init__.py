"""Datasets (registered on import), mappers and generated data."""
from cad.data import builtin  # noqa: F401  (registers the predefined splits)
from cad.data.mapper import CadDatasetMapper
from cad.data.paths import DatasetMissingError, datasets_root

__all__ = ["CadDatasetMapper", "DatasetMissingError", "datasets_root"]
