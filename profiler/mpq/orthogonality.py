"""Network orthogonality (ORM): centred linear CKA between layers, computed from N×N Gram matrices.

For a calibration batch of ``N`` inputs, layer ``i``'s output flattened per sample is ``X_i ∈ R^{N×D_i}``
and its Gram matrix is ``K_i = X_i X_iᵀ`` (``N×N``, whatever ``D_i`` is). With the centring matrix
``H = I − 11ᵀ/N`` and ``K̃ = H K H``:

.. math::
    \\mathrm{ORM}(i, j) = \\frac{\\langle \\tilde K_i, \\tilde K_j \\rangle_F}
                              {\\lVert \\tilde K_i \\rVert_F \\, \\lVert \\tilde K_j \\rVert_F},

the linear CKA of Kornblith et al. (2019) as OMPQ (Ma et al., AAAI 2023) computes it: the biased HSIC
estimator, whose ``1/(N−1)²`` factors cancel. It is 1 for identical features, symmetric, in ``[0, 1]``
(the centred Grams are positive semi-definite) and invariant to isotropic scaling and orthogonal
transforms of either feature space, so layers of different widths compare directly. Cost: ``O(N²·ΣD_i)``
for the Grams and ``O(L²·N²)`` for all pairs (one matmul of the flattened, normalised Grams).

**Degenerate layers.** A layer whose output is the same for every sample of the batch has ``K̃ = 0``
and CKA is 0/0. That is routine in a denoiser: at a fixed timestep the time-embedding layers see one
value of ``t`` for the whole batch. Their HSIC with every other layer is exactly 0, so we define their
ORM with every other layer as 0 (orthogonal: they share no sample-wise information), and 1 with
themselves. :func:`cka_matrix` flags a layer degenerate when ``‖K̃‖_F`` is zero or its variance share
``tr K̃ / tr K`` is below :data:`DEGENERATE_RTOL` (float rounding leaves ~1e−14 on identical rows).
"""
from __future__ import annotations

import numpy as np
import torch

#: Variance share ``tr K̃ / tr K`` under which a layer's output counts as constant over the batch.
DEGENERATE_RTOL = 1e-10


def gram_linear(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``K = X Xᵀ`` in float64 for features ``x`` ``[N, D]`` (or ``[N, ...]``, flattened per sample)."""
    x = torch.as_tensor(x).reshape(len(x), -1).double()
    return x @ x.T


def center_gram(gram: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``H K H`` for a symmetric ``[..., N, N]`` Gram matrix (rows and columns with zero mean), float64.

    Idempotent: centring a centred Gram changes nothing.
    """
    k = torch.as_tensor(gram).double()
    if k.shape[-1] != k.shape[-2]:
        raise ValueError(f"a Gram matrix must be square, got shape {tuple(k.shape)}")
    if not torch.allclose(k, k.transpose(-1, -2), rtol=1e-6, atol=1e-12 * float(k.abs().max()) + 1e-300):
        raise ValueError("a Gram matrix must be symmetric")
    k = k - k.mean(-1, keepdim=True)
    return k - k.mean(-2, keepdim=True)


def centered_gram_from_features(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(K̃, tr K)`` for features ``x`` ``[N, D]``: the centred Gram ``[N, N]`` (float64) and the
    uncentred energy ``‖X‖_F²`` (for the degeneracy test).

    Centring the features first (``X̃ = X − mean over samples``, ``K̃ = X̃ X̃ᵀ``) equals ``H K H`` and avoids
    the cancellation of centring a Gram dominated by a shared mean. Float32 features are multiplied in
    float32 (CKA needs ~3 significant digits; the Gram is the profiler's main cost after the forward)
    and the result is stored in float64; float64 features stay float64.
    """
    x = x.reshape(len(x), -1)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    mu = x.mean(0, keepdim=True)
    xc = x - mu
    k = (xc @ xc.T).double()
    # ‖X‖² = ‖X̃‖² + N‖μ‖² = tr K̃ + N‖μ‖²: the energy without another pass over X
    energy = float(k.diagonal().sum()) + len(x) * float(mu.double().pow(2).sum())
    return k, energy


def degenerate_mask(centered: torch.Tensor, energy: torch.Tensor | None = None) -> torch.Tensor:
    """``[L]`` bool: layers whose centred Gram (``[L, N, N]``) is (numerically) zero; see module doc."""
    var = centered.diagonal(dim1=-2, dim2=-1).sum(-1)  # tr K̃ = ‖X̃‖_F² ≥ 0
    mask = centered.flatten(1).norm(dim=1) == 0
    if energy is not None:
        energy = torch.as_tensor(energy, dtype=torch.float64)
        mask |= var <= DEGENERATE_RTOL * energy
    return mask


def cka_matrix(grams: torch.Tensor, energy: torch.Tensor | None = None, centered: bool = False) -> torch.Tensor:
    """All-pairs ORM ``[L, L]`` (float64) from Gram matrices ``grams`` ``[L, N, N]``.

    Args:
        grams: one Gram matrix per layer, all over the same ``N`` samples in the same order.
        energy: optional ``[L]`` uncentred ``tr K`` per layer, to detect constant layers by variance share.
        centered: the Grams are already centred (skips the centring, which is idempotent anyway).

    Degenerate layers (see module doc) get ORM 0 with every other layer and 1 on the diagonal.
    """
    k = torch.as_tensor(grams).double()
    if k.dim() != 3:
        raise ValueError(f"grams must have shape [L, N, N], got {tuple(k.shape)}")
    if k.shape[1] < 2:
        raise ValueError(f"CKA needs at least 2 samples per Gram matrix, got N={k.shape[1]}")
    kc = k if centered else center_gram(k)
    dead = degenerate_mask(kc, energy)
    flat = kc.flatten(1)
    norms = flat.norm(dim=1)
    unit = flat / torch.where(dead, torch.ones_like(norms), norms)[:, None]
    unit[dead] = 0.0
    orm = (unit @ unit.T).clamp_(0.0, 1.0)  # PSD Grams give ⟨K̃_i, K̃_j⟩ ≥ 0; clamp float noise only
    orm.fill_diagonal_(1.0)
    return orm


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """ORM of two feature matrices ``x`` ``[N, D_x]`` and ``y`` ``[N, D_y]`` (same samples, any widths)."""
    if len(x) != len(y):
        raise ValueError(f"features must share the sample axis: {len(x)} vs {len(y)} samples")
    gx, ex = centered_gram_from_features(torch.as_tensor(x))
    gy, ey = centered_gram_from_features(torch.as_tensor(y))
    return float(cka_matrix(torch.stack([gx, gy]), torch.tensor([ex, ey]), centered=True)[0, 1])


def orthogonality_sums(orm: torch.Tensor) -> torch.Tensor:
    """``γ_i = Σ_{j≠i} ORM(i, j)`` ``[L]``: how much of layer ``i``'s batch geometry the others share."""
    orm = torch.as_tensor(orm).double()
    return orm.sum(1) - orm.diagonal()
