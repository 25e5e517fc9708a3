"""Shared fixture of the MPQ tests: the calibration dataset (one torch thread: tests/conftest.py)."""
import pytest

from data import load_dataset


@pytest.fixture(scope="module")
def data():
    return load_dataset("builtin:gradients_linear")
