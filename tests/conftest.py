"""Suite-wide test settings.

Tests use tiny models, where OpenMP's thread start-up costs more than it saves, and on a busy 2-core
machine oversubscribed threads made single tests 60× slower: run torch on one thread. Everything is
offline, and a test never writes into the user's mandc cache.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_mandc_home(tmp_path_factory, monkeypatch):
    """The whole session shares one fresh $MANDC_HOME (zoo cache, graph store); a test may set its own."""
    monkeypatch.setenv("MANDC_HOME", str(tmp_path_factory.getbasetemp() / "mandc_home"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Each test starts on one torch thread (a test that changes it, or a library that does, cannot slow the
    next ones: OpenMP spin-waits on a shared CPU made tiny-tensor tests up to 60× slower); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
