"""DatasetFeatures: fixed length, finite, JSON round trip, and families separate on the catalog."""
import json

import numpy as np
import pytest
from PIL import Image

from data import DatasetError, DatasetFeatures, ImageTextDataset, load_builtin, similarity_matrix
from data.features import projection_matrix

# 3 families x 3 datasets, 30 pairs each: enough to see the family structure, cheap to embed
SUBSET = ["shapes_circles", "shapes_on_dark", "shapes_triangles",
          "digits_low", "digits_color", "digits_pairs",
          "photos_cat", "photos_rocket", "photos_mixed"]


@pytest.fixture(scope="module")
def feats():
    return [DatasetFeatures.compute(load_builtin(name, n=30)) for name in SUBSET]


def test_vector_fixed_length_and_finite(feats):
    names = DatasetFeatures.feature_names()
    assert len(names) == len(set(names)) == 45
    for f in feats:
        v = f.to_vector()
        assert v.dtype == np.float32 and v.shape == (len(names),) and np.isfinite(v).all()
        assert f.n_images == 25 and f.resolution == (32, 32) and f.caption_mean.shape == (384,)
        assert 0 <= f.edge_density <= 1 and 0 <= f.flatness <= 1 and 0 <= f.saturation <= 1
    # a user dataset of mixed sizes, one caption, tiny images: still the same length
    odd = ImageTextDataset([Image.new("RGB", (7, 5), (9, 9, 9)), Image.new("RGB", (64, 48))], ["x", "x"])
    v = DatasetFeatures.compute(odd, name="odd").to_vector()
    assert v.shape == (45,) and np.isfinite(v).all()


def test_json_round_trip(feats):
    f = feats[0]
    back = DatasetFeatures.from_dict(json.loads(json.dumps(f.to_dict())))
    assert np.array_equal(back.to_vector(), f.to_vector())
    assert np.array_equal(back.caption_mean, f.caption_mean) and back.resolution == f.resolution
    bad = f.to_dict() | {"spectrum": [0.0] * 3}
    with pytest.raises(DatasetError, match="spectrum must have 8 values"):
        DatasetFeatures.from_dict(bad)
    with pytest.raises(DatasetError, match="version"):
        DatasetFeatures.from_dict(f.to_dict() | {"version": 99})


def test_projection_is_fixed_and_orthonormal():
    q = projection_matrix()
    assert q.shape == (384, 16)
    assert np.allclose(q.T @ q, np.eye(16), atol=1e-10)


def test_features_are_deterministic(feats):
    again = DatasetFeatures.compute(load_builtin(SUBSET[0], n=30))
    assert np.allclose(again.to_vector(), feats[0].to_vector(), atol=1e-6)


def test_within_family_more_similar_than_across(feats):
    fam = np.array([n.split("_")[0] for n in SUBSET])
    s = similarity_matrix(feats)
    same = (fam[:, None] == fam[None, :]) & ~np.eye(len(fam), dtype=bool)
    within, across = s[same].mean(), s[fam[:, None] != fam[None, :]].mean()
    assert within > across + 0.3, (within, across)
    # and datasets within a family are not interchangeable
    assert s[same].max() < 0.99


def test_empty_dataset_is_an_error():
    with pytest.raises(DatasetError, match="empty"):
        DatasetFeatures.compute(ImageTextDataset([], [], "nothing"))


def test_minilm_forward_matches_transformers():
    """data.text's own BERT forward (no transformers import) gives transformers.BertModel's embeddings."""
    import torch

    from data.text import embed_captions, load_minilm

    caps = sorted(set(load_builtin("photos_mixed", n=30).train.captions) | set(load_builtin("digits_pairs", n=30).train.captions))
    caps += ["", "UPPER Case, punctuation!?", "naïve café — 東京", "a " * 300]  # empty, accents, CJK, truncated
    threads = torch.get_num_threads()
    ours = embed_captions(caps)
    assert torch.get_num_threads() == threads  # the one-thread embedding restores the setting
    tok, model = load_minilm()
    with torch.no_grad():
        enc = tok(caps, padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1).numpy()
    assert ours.shape == (len(caps), 384) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-5
