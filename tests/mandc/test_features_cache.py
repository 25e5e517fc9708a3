"""Caching a folder's features by its content (issue 17 item 5): a second ``recommend`` on an unchanged
folder recomputes nothing, a changed image or caption is recomputed, a corrupt cache file is ignored; and the
selector the package ships for the shipped reference."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest
from planner_reference import make_reference

from data.features import DatasetFeatures
from mandc import cache as cache_mod
from mandc.cache import FeaturesCache, SelectorCache, features_key
from mandc.planner import Planner
from mandc.store import Store


@pytest.fixture(scope="module")
def reference():
    return make_reference()


@pytest.fixture(scope="module")
def selector_cache(tmp_path_factory):
    """The fitted selector is shared across the module (the graph is the same); features caches are not."""
    return tmp_path_factory.mktemp("selectors")


@pytest.fixture
def folder(tmp_path):
    from data import load_builtin, write_imagefolder

    return write_imagefolder(load_builtin("shapes_polygons", n=12), tmp_path / "my_shapes")


@pytest.fixture
def computed(monkeypatch):
    """Counts DatasetFeatures.compute calls."""
    calls = []
    real = DatasetFeatures.compute.__func__

    def counting(cls, ds, name=None):
        calls.append(ds.name)
        return real(cls, ds, name)

    monkeypatch.setattr(DatasetFeatures, "compute", classmethod(counting))
    return calls


def _planner(tmp_path, reference, selector_cache):
    cache = tmp_path / "cache"
    if not cache.exists():
        shutil.copytree(selector_cache, cache)
    return Planner(Store(tmp_path / "g.sqlite", reference=reference), cache_dir=cache)


def test_second_recommend_on_a_folder_reads_the_features_cache(tmp_path, reference, selector_cache, folder, computed):
    first = _planner(tmp_path, reference, selector_cache).recommend(folder)
    for p in (tmp_path / "cache").glob("selector-*.pkl"):
        shutil.copy(p, selector_cache)
    assert computed == ["my_shapes"]
    files = list((tmp_path / "cache").glob("features-*.json"))
    assert [p.name for p in files] == [f"features-{features_key(folder)}.json"]
    assert any("were computed" in n for n in first.notes)

    again = _planner(tmp_path, reference, selector_cache).recommend(folder)  # a fresh planner, as a new process
    assert computed == ["my_shapes"]  # not recomputed
    assert again.cached and any("read from the features cache" in n for n in again.notes)
    assert [(e.model, e.score) for e in again.entries] == [(e.model, e.score) for e in first.entries]
    assert again.nearest == first.nearest
    assert [n for n in again.notes if "images for the features" in n] == \
        [n for n in first.notes if "images for the features" in n]


def test_a_changed_caption_or_image_is_recomputed(tmp_path, reference, selector_cache, folder, computed):
    from PIL import Image

    planner = _planner(tmp_path, reference, selector_cache)
    key0 = features_key(folder)
    v0 = planner.recommend(folder, top_k=1)
    meta = folder / "train" / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    rows[0]["text"] = "a completely different caption about a purple elephant"
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    key1 = features_key(folder)
    v1 = _planner(tmp_path, reference, selector_cache).recommend(folder, top_k=1)
    img = folder / "train" / rows[1]["file_name"]
    Image.new("RGB", Image.open(img).size, (255, 0, 255)).save(img)
    key2 = features_key(folder)
    _planner(tmp_path, reference, selector_cache).recommend(folder, top_k=1)
    assert len({key0, key1, key2}) == 3 and len(computed) == 3
    assert {p.name for p in (tmp_path / "cache").glob("features-*.json")} == {f"features-{k}.json" for k in (key0, key1, key2)}
    f0, f1 = (FeaturesCache(tmp_path / "cache").get(k)[0] for k in (key0, key1))
    assert (f0.caption_mean != f1.caption_mean).any() and v0.dataset == v1.dataset


@pytest.mark.parametrize("content", [b"{not json", b"", json.dumps({"key": "x", "features": {}, "info": {}}).encode(),
                                     "wrong-length"])
def test_a_corrupt_features_file_is_recomputed_not_trusted(tmp_path, reference, selector_cache, folder, computed, content):
    planner = _planner(tmp_path, reference, selector_cache)
    first = planner.recommend(folder)
    path = tmp_path / "cache" / f"features-{features_key(folder)}.json"
    if content == "wrong-length":
        d = json.loads(path.read_text())
        d["features"]["caption_mean"] = d["features"]["caption_mean"][:10]
        content = json.dumps(d).encode()
    path.write_bytes(content)
    for p in (tmp_path / "cache").glob("targets-*.json"):
        p.write_text('{"targets": {"x": 1}}')  # the predictions cache is just as untrusted
    again = _planner(tmp_path, reference, selector_cache).recommend(folder)
    assert len(computed) == 2 and any("were computed" in n for n in again.notes)
    assert [(e.model, e.score) for e in again.entries] == [(e.model, e.score) for e in first.entries]
    assert FeaturesCache(tmp_path / "cache").get(features_key(folder)) is not None  # rewritten whole


def test_shipped_selector_is_read_only_for_its_own_key(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "selector-k1.pkl").write_bytes(pickle.dumps({"fitted": "shipped"}))
    monkeypatch.setattr(cache_mod, "SHIPPED", shipped)
    cache = SelectorCache(tmp_path / "cache")

    def fit():
        raise AssertionError("fitted although the package ships it")

    assert cache.selector("k1", fit) == ({"fitted": "shipped"}, True)
    assert SelectorCache(tmp_path / "cache").selector("k2", lambda: "fresh") == ("fresh", False)  # another key: fit
    (shipped / "selector-k3.pkl").write_bytes(b"truncated")
    assert SelectorCache(False).selector("k3", lambda: "refit") == ("refit", False)


def test_shipped_selector_matches_the_reference():
    """Fails while ``mandc/shipped`` is stale (the reference, the selection code or a pinned library
    changed): regenerate it with ``python -m mandc.ship``."""
    from mandc.ship import reference_key

    key = reference_key()
    assert (cache_mod.SHIPPED / f"selector-{key}.pkl").is_file(), \
        f"mandc/shipped has no selector-{key}.pkl: run `python -m mandc.ship`"
    assert len(list(cache_mod.SHIPPED.glob("selector-*.pkl"))) == 1
