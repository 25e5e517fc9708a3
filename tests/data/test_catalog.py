"""The built-in catalog: size, shape, splits, determinism, seed dependence, disjoint source pools."""
import time

import numpy as np
import pytest

from data import DatasetError, load_dataset
from data.catalog import families, get_entry, list_catalog, load_builtin
from data.catalog.base import Context, source_pool


@pytest.fixture(scope="module")
def catalog():
    t = time.perf_counter()
    out = {e.name: load_builtin(e.name) for e in list_catalog()}
    return out, time.perf_counter() - t


def test_catalog_size_and_families(catalog):
    entries = list_catalog()
    assert len(entries) >= 40 and len(families()) >= 6
    assert len({e.name for e in entries}) == len(entries)
    for fam in families():
        assert len(list_catalog(fam)) >= 3, fam
    with pytest.raises(DatasetError, match="unknown dataset family"):
        list_catalog("nope")


def test_every_dataset_has_the_documented_shape(catalog):
    datasets, seconds = catalog
    assert seconds < 60, f"loading the whole catalog took {seconds:.1f}s"  # budget 20 s; generous for CI noise
    for name, ds in datasets.items():
        e = get_entry(name)
        assert (len(ds.train), len(ds.heldout)) == (e.n_train, e.n_heldout) == (80, 16), name
        assert len(ds) >= 64 and ds.family == e.family and ds.ref == f"builtin:{name}"
        for im, text in zip(ds.train.images + ds.heldout.images, ds.train.captions + ds.heldout.captions):
            assert im.mode == "RGB" and im.size == e.resolution == (32, 32), name
            assert isinstance(text, str) and len(text.split()) >= 3, name
        train = {im.tobytes() for im in ds.train.images}
        assert not any(im.tobytes() in train for im in ds.heldout.images), f"{name}: held-out image in train"
        assert len(train) >= 0.9 * len(ds.train), f"{name}: too many duplicate images"


def test_captions_vary_within_procedural_datasets(catalog):
    datasets, _ = catalog
    for name, ds in datasets.items():
        if ds.family in ("shapes", "patterns", "gradients", "compositions", "digits"):
            assert len(set(ds.train.captions)) >= 5, name


def test_deterministic_and_seed_dependent(catalog):
    datasets, _ = catalog
    for fam in families():
        name = list_catalog(fam)[0].name
        again = load_builtin(name)
        ref = datasets[name]
        assert again.train.captions == ref.train.captions and again.heldout.captions == ref.heldout.captions
        assert [im.tobytes() for im in again.train.images] == [im.tobytes() for im in ref.train.images]
        other = load_builtin(name, seed=1)
        assert [im.tobytes() for im in other.train.images] != [im.tobytes() for im in ref.train.images]
        assert load_builtin(name, seed=1).train.captions == other.train.captions


def test_n_and_size_overrides():
    ds = load_builtin("digits_low", seed=2, n=300, size=48)
    assert (len(ds.train), len(ds.heldout)) == (250, 50)
    assert ds.train.images[0].size == (48, 48)
    with pytest.raises(DatasetError, match="n must be at least 2"):
        load_builtin("digits_low", n=1)
    with pytest.raises(DatasetError, match="seed must be a non-negative"):
        load_builtin("digits_low", seed=-1)


def test_unknown_name_suggests_close_names():
    with pytest.raises(DatasetError, match=r"shapes_circles.*mandc data list"):
        load_builtin("shape_circle")
    with pytest.raises(DatasetError, match="shapes_circles"):
        load_dataset("builtin:shapes_circle")


def test_source_pools_are_disjoint():
    """Seed-0 train/held-out and zoo train/held-out draws never share a source item, whatever the
    candidate list (datasets filter the same source differently, e.g. digits 0-4 vs all digits)."""
    picks = {}
    for cands in (np.arange(200), np.arange(0, 200, 3)):
        for canonical in (True, False):
            for heldout in (False, True):
                ctx = Context(np.random.default_rng(0), 32, canonical, heldout)
                picks.setdefault(ctx.pool, set()).update(ctx.pick(cands) for _ in range(300))
    pools = list(picks.values())
    assert all(not (a & b) for i, a in enumerate(pools) for b in pools[i + 1:])
    assert 10 <= len(picks["eval-heldout"]) <= 30 and len(picks["zoo-train"]) >= 80
    assert set(source_pool(sorted(picks["eval-heldout"]))) == {"eval-heldout"}


def test_load_dataset_resolves_references(tmp_path):
    ds = load_dataset("builtin:gradients_linear", seed=3)
    assert ds.meta["seed"] == 3 and ds.family == "gradients"
    assert load_dataset(ds) is ds
    with pytest.raises(DatasetError, match="neither 'builtin:NAME' nor an existing folder"):
        load_dataset("no/such/thing")
    with pytest.raises(DatasetError, match="cannot use a int"):
        load_dataset(3)
