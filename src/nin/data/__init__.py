"""Data sets as uint8 tensors, their preprocessing (preprocess.py), and the on-device batched loader."""
from .datasets import DATASETS, Split, dataset_info, load_dataset
from .images import load_image
from .loader import DeviceLoader
from .preprocess import Normalize

__all__ = ["DATASETS", "Split", "dataset_info", "load_dataset", "load_image", "DeviceLoader", "Normalize"]
