"""Datasets: imagefolder I/O, the built-in offline catalog, dataset features."""
from data.dataset import DatasetError, ImageTextDataset, SplitDataset, center_square, split_heldout
from data.text import embed_captions, minilm_path

__all__ = ["DatasetError", "ImageTextDataset", "SplitDataset", "center_square", "split_heldout",
           "embed_captions", "minilm_path"]
