"""Datasets: imagefolder I/O, the built-in offline catalog, dataset features."""
from data.catalog import CatalogEntry, families, get_entry, list_catalog, load_builtin
from data.dataset import DatasetError, ImageTextDataset, SplitDataset, center_square, split_heldout
from data.features import DatasetFeatures, similarity_matrix
from data.imagefolder import from_records, read_imagefolder, write_imagefolder
from data.refs import load_dataset
from data.text import embed_captions, minilm_path

__all__ = ["DatasetError", "ImageTextDataset", "SplitDataset", "center_square", "split_heldout",
           "embed_captions", "minilm_path",
           "load_dataset", "read_imagefolder", "write_imagefolder", "from_records",
           "CatalogEntry", "list_catalog", "families", "get_entry", "load_builtin",
           "DatasetFeatures", "similarity_matrix"]
