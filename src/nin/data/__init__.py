"""Data sets as uint8 tensors, input normalisation, and the on-device batched loader."""
from .datasets import DATASETS, Split, dataset_info, load_dataset
from .images import load_image
from .loader import DeviceLoader, Normalize

__all__ = ["DATASETS", "Split", "dataset_info", "load_dataset", "load_image", "DeviceLoader", "Normalize"]
