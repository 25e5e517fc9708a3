"""Shared fixtures of the MPQ tests: one torch thread, and the calibration dataset."""
import pytest
import torch

from data import load_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; avoids OpenMP spin-waits on a shared CPU
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    return load_dataset("builtin:gradients_linear")
