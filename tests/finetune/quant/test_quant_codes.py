"""Code packing and weight quantizers."""
import pytest
import torch

from finetune.quant.packing import pack_codes, packed_row_bytes, unpack_codes
from finetune.quant.weight_init import dequantize_codes, quantize_weight


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("k", [1, 6, 7])
def test_pack_roundtrip_and_real_width(bits, k):
    g = torch.Generator().manual_seed(bits * 10 + k)
    codes = torch.randint(0, 2**bits, (5, k), generator=g, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (5, (k + 1) // 2 if bits <= 4 else k) == (5, packed_row_bytes(k, bits))
    assert torch.equal(unpack_codes(packed, bits, k), codes)


def test_pack_rejects_codes_too_wide():
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        pack_codes(torch.full((2, 2), 16, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="2..8"):
        pack_codes(torch.zeros(2, 2, dtype=torch.uint8), 9)


def _mse(w, bits, **kw):
    codes, z, s = quantize_weight(w, bits, **kw)
    return (dequantize_codes(codes, z, s).view_as(w) - w).pow(2).mean(1), codes, z, s


@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_error_within_half_step(symmetric):
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 16)[:, None]
    codes, z, s = quantize_weight(w, 4, init="minmax", symmetric=symmetric)
    assert codes.dtype == z.dtype == torch.uint8 and s.dtype == torch.float32
    assert int(codes.max()) <= 15
    err = (dequantize_codes(codes, z, s) - w).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()
    if symmetric:
        assert (z == 8).all()


def test_clip_search_never_worse_than_minmax_and_clips_outliers():
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    w[:, 0] = 12.0  # one outlier per row: min-max wastes most of the grid on it
    mse_mm = _mse(w, 3, init="minmax")[0]
    mse_clip, _, _, s_clip = _mse(w, 3, init="clip")
    assert (mse_clip <= mse_mm + 1e-7).all()
    assert mse_clip.mean() < 0.9 * mse_mm.mean()
    _, _, _, s_mm = _mse(w, 3, init="minmax")
    assert (s_clip < s_mm).any()


def test_zero_rows_and_bad_input():
    w = torch.zeros(3, 5)
    w[1] = torch.arange(5.0)
    codes, z, s = quantize_weight(w, 2)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert torch.equal(dequantize_codes(codes, z, s)[0], torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        quantize_weight(torch.tensor([[float("nan"), 1.0]]), 4)
    with pytest.raises(ValueError, match="init"):
        quantize_weight(w, 4, init="mse")
    with pytest.raises(ValueError, match="clip_ratios"):
        quantize_weight(w, 4, clip_ratios=[1.5])


@pytest.mark.parametrize("symmetric", [False, True])
def test_clip_search_is_the_first_best_ratio_per_row(symmetric, monkeypatch):
    """The blocked, all-ratios-at-once search picks, per row, exactly the first ratio of the grid with the
    smallest weight MSE: checked against scoring each ratio alone, with blocks of a few rows (the search's
    block boundaries fall inside the weight), an all-zero row and a repeated ratio."""
    import finetune.quant.weight_init as wi

    g = torch.Generator().manual_seed(3)
    w = torch.randn(13, 3, 3, 3, generator=g) * torch.linspace(0.05, 2, 13)[:, None, None, None]
    w[2, 0, 0, 0] = 9.0
    w[5] = 0.0
    ratios = (0.5, 0.75, 0.75, 0.9, 1.0)
    monkeypatch.setattr(wi, "_SEARCH_BLOCK", len(ratios) * 27 * 4)  # 4 rows a block
    codes, z, s = quantize_weight(w, 3, symmetric=symmetric, clip_ratios=ratios)
    w2 = w.reshape(13, -1)
    lo, hi = w2.amin(1).clamp(max=0), w2.amax(1).clamp(min=0)
    errs, params = [], []
    for r in ratios:
        sr, zr = wi._affine_params(lo * r, hi * r, 3, symmetric)
        errs.append(((wi._codes(w2, sr, zr, 3) - zr[:, None]) * sr[:, None] - w2).pow(2).mean(1))
        params.append((sr, zr))
    errs = torch.stack(errs)
    first = [int(torch.nonzero(errs[:, o] == errs[:, o].min())[0]) for o in range(13)]
    assert torch.equal(s, torch.stack([params[k][0][o] for o, k in enumerate(first)]))
    assert torch.equal(z.float(), torch.stack([params[k][1][o] for o, k in enumerate(first)]))
    assert torch.equal(codes, wi._codes(w2, s, z.float(), 3).to(torch.uint8))
    assert len(set(first)) > 1  # the rows do not all choose the same ratio
