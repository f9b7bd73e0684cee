"""Datasets as whole in-memory tensors: `load_split(name, data_dir, train)`.

See registry.py for the table of datasets and where each one's files live.
"""
from datasets.common import DatasetError
from datasets.registry import DATASETS, EVAL_SPLITS, DatasetSpec, get_spec, load_eval_split, load_split

__all__ = ["DATASETS", "EVAL_SPLITS", "DatasetError", "DatasetSpec", "get_spec", "load_eval_split", "load_split"]
