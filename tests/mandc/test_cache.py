"""mandc.cache: the selector key changes with what a fitted selector depends on; the disk cache answers a
second cache object, refits over a corrupt file, and keeps only the newest files."""
from __future__ import annotations

import os

from mandc.cache import SelectorCache, selector_key
from mandc.select import SelectorConfig


def test_key_follows_graph_and_config():
    a = selector_key("graph:1", SelectorConfig())
    assert len(a) == 32 and a == selector_key("graph:1", SelectorConfig())
    assert a != selector_key("graph:2", SelectorConfig())
    assert a != selector_key("graph:1", SelectorConfig(probe=True))


def test_disk_cache_is_shared_refits_corrupt_files_and_prunes(tmp_path):
    fits = []

    def fit():
        fits.append(1)
        return {"fitted": len(fits)}

    one = SelectorCache(tmp_path)
    assert one.selector("k1", fit) == ({"fitted": 1}, False)
    assert one.selector("k1", fit) == ({"fitted": 1}, True)          # memory
    assert SelectorCache(tmp_path).selector("k1", fit) == ({"fitted": 1}, True)  # disk, another object
    (tmp_path / "selector-k1.pkl").write_bytes(b"\x80\x04truncated")
    assert SelectorCache(tmp_path).selector("k1", fit) == ({"fitted": 2}, False)  # never trusts a bad file

    one.save_predictions("k1", {"builtin:a": {"m": 0.5}}, {"rounds": 3})
    assert SelectorCache(tmp_path).predictions("k1", "builtin:a") == ({"m": 0.5}, {"rounds": 3})
    assert one.predictions("k1", "builtin:b") is None and one.predictions("k2", "builtin:a") is None

    d = tmp_path / "small"
    small = SelectorCache(d, keep=2)
    for i in range(4):
        small.selector(f"p{i}", fit)
        os.utime(d / f"selector-p{i}.pkl", (1000 + i, 1000 + i))  # p3 newest
    small.prune()
    assert sorted(p.name for p in d.glob("selector-*.pkl")) == ["selector-p2.pkl", "selector-p3.pkl"]
    assert SelectorCache(False).selector("x", fit)[1] is False and not list(tmp_path.glob("selector-x*"))
