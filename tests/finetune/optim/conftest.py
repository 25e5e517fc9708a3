import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests use tiny tensors: one thread is fastest, and it avoids OpenMP spin-waits, which made
    them up to 60x slower when other processes share the CPU. Restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
