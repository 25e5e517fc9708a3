"""Properties of the orthogonality metric (linear CKA from Gram matrices) and the importance aggregation."""
import numpy as np
import pytest
import torch

from profiler.mpq.importance import aggregate_importance, sample_timesteps, suffix_mean, timestep_weights
from profiler.mpq.orthogonality import (center_gram, centered_gram_from_features, cka_matrix, gram_linear,
                                        linear_cka, orthogonality_sums)


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 40, generator=g, dtype=torch.float64)
    y = x[:, :25] @ torch.randn(25, 30, generator=g, dtype=torch.float64) + 0.5 * torch.randn(16, 30, generator=g, dtype=torch.float64)
    return x, y


def test_identical_features_give_one(feats):
    x, _ = feats
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_symmetric_and_bounded(feats):
    x, y = feats
    v = linear_cka(x, y)
    assert 0.0 < v < 1.0
    assert linear_cka(y, x) == pytest.approx(v, abs=1e-12)


def test_invariant_to_isotropic_scaling_and_orthogonal_transforms(feats):
    x, y = feats
    v = linear_cka(x, y)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert linear_cka(3.7 * x, y) == pytest.approx(v, abs=1e-12)
    assert linear_cka(x, 0.01 * y) == pytest.approx(v, abs=1e-12)
    assert linear_cka(x @ q, y) == pytest.approx(v, abs=1e-12)
    # ... and to a shift shared by all samples (the centring removes it)
    assert linear_cka(x + 5.0, y) == pytest.approx(v, abs=1e-10)


def test_not_invariant_to_anisotropic_scaling(feats):
    x, y = feats
    d = torch.ones(40, dtype=torch.float64)
    d[:5] = 20.0
    assert abs(linear_cka(x * d, y) - linear_cka(x, y)) > 1e-3


def test_independent_features_are_nearly_orthogonal():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(256, 8, generator=g), torch.randn(256, 8, generator=g)
    assert linear_cka(x, y) < 0.1


def test_gram_route_matches_feature_route(feats):
    x, y = feats
    grams = torch.stack([gram_linear(x), gram_linear(y)])
    m = cka_matrix(grams)
    assert m.shape == (2, 2)
    torch.testing.assert_close(m, m.T)
    assert float(m[0, 1]) == pytest.approx(linear_cka(x, y), abs=1e-10)
    kc, _ = centered_gram_from_features(x)
    torch.testing.assert_close(center_gram(gram_linear(x)), kc)
    torch.testing.assert_close(center_gram(kc), kc)  # idempotent


def test_constant_layer_is_orthogonal_to_all(feats):
    x, y = feats
    const = torch.ones(16, 7, dtype=torch.float64) * 3.0
    grams, energy = zip(*(centered_gram_from_features(f) for f in (x, y, const)))
    m = cka_matrix(torch.stack(grams), torch.tensor(energy), centered=True)
    assert torch.isfinite(m).all()
    assert float(m[2, 2]) == 1.0 and float(m[2, 0]) == 0.0 and float(m[1, 2]) == 0.0
    gamma = orthogonality_sums(m)
    assert float(gamma[2]) == 0.0 and float(gamma[0]) == pytest.approx(float(m[0, 1]))


def test_bad_grams_are_rejected():
    with pytest.raises(ValueError, match="symmetric"):
        center_gram(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        cka_matrix(torch.ones(3, 1, 1))


def test_timesteps_and_weights():
    assert sample_timesteps(1000, 10) == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    assert sample_timesteps(20, 20) == list(range(20))
    with pytest.raises(ValueError, match="1..1000"):
        sample_timesteps(1000, 0)
    w0 = timestep_weights([0, 500, 999], 1000, 0.0)
    np.testing.assert_allclose(w0, [1 / 3] * 3)
    w = timestep_weights([0, 500, 999], 1000, 2.0)
    assert w.sum() == pytest.approx(1.0) and w[0] < w[1] < w[2]
    assert w[2] / w[0] == pytest.approx(np.exp(2.0))


def test_aggregate_importance_is_weighted_mean_of_exp():
    gamma = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    ts = [100, 900]
    for alpha in (0.0, 1.5):
        w = timestep_weights(ts, 1000, alpha)
        ref = (w[:, None] * np.exp(-0.7 * gamma)).sum(0)
        np.testing.assert_allclose(aggregate_importance(gamma, ts, 1000, 0.7, alpha), ref / ref.max())
    # huge β·γ does not underflow to 0/0
    theta = aggregate_importance(gamma * 1000, ts, 1000, 1.0)
    assert np.isfinite(theta).all() and theta.max() == 1.0
    np.testing.assert_allclose(suffix_mean([1.0, 2.0, 3.0]), [2.0, 2.5, 3.0])
