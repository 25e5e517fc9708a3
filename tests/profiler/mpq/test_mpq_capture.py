"""Gram capture on a hand-made denoiser whose layers and calls are known exactly (no diffusers)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from data import ImageTextDataset
from profiler.mpq.capture import CalibrationBatch, layer_grams, probe_layers
from profiler.mpq.orthogonality import centered_gram_from_features
from profiler.mpq.profile import validation_images


class TwiceNet(nn.Module):
    """``inp`` reads x_t, ``shared`` runs twice per forward, ``head`` writes the output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.shared, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):
        h = self.shared(torch.tanh(self.inp(x)))
        return self.head(self.shared(torch.tanh(h)))


class Scheduler:
    def add_noise(self, x0, noise, t):
        return x0 + 0.01 * t[:, None].float() * noise


class FakeModel:
    num_train_timesteps = 100

    def __init__(self):
        self.denoiser, self.scheduler = TwiceNet(), Scheduler()

    def denoise(self, x, t, cond):
        return self.denoiser(x * cond)


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(1)
    n = 6
    batch = CalibrationBatch(torch.randn(n, 4, generator=g), torch.rand(n, 4, generator=g) + 0.5,
                             torch.randn(n, 4, generator=g), [f"c{i}" for i in range(n)])
    model = FakeModel()
    return model, batch


def test_probe_counts_calls_macs_and_roles(setup):
    model, batch = setup
    layers = probe_layers(model, batch)
    assert [i.name for i in layers] == ["inp", "shared", "head"]
    shared = layers[1]
    assert shared.calls == 2 and shared.feature_dim == 12 and shared.macs == 2 * 6 * 6
    # x_t is multiplied by the conditioning before `inp` sees it, so no layer reads x_t itself: the first runs
    assert [i.role for i in layers] == ["input", "", "output"]


def test_twice_called_layer_gram_is_that_of_its_concatenated_outputs(setup):
    model, batch = setup
    layers = probe_layers(model, batch)
    outs = []
    h = model.denoiser.shared.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
    with torch.no_grad():
        model.denoise(batch.noised(model, 30), 30, batch.cond)
    h.remove()
    want, energy = centered_gram_from_features(torch.cat(outs, 1).double())
    cap = layer_grams(model, batch, 30, layers)
    torch.testing.assert_close(cap.grams[1], want, rtol=1e-5, atol=1e-6)
    assert float(cap.energy[1]) == pytest.approx(energy, rel=1e-5)
    # micro-batches with one layer per group give the same Grams and activation ranges
    split = layer_grams(model, batch, 30, layers, micro_batch=4, max_feature_bytes=1)
    torch.testing.assert_close(split.grams, cap.grams, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split.input_max, cap.input_max)
    assert float(cap.input_max[0]) == pytest.approx(float((batch.noised(model, 30) * batch.cond).abs().max()))


def test_validation_images_are_outside_the_calibration_batch():
    from PIL import Image

    imgs = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(10)]
    train = ImageTextDataset(imgs, [f"img {i}" for i in range(10)], name="t")
    batch = CalibrationBatch(torch.zeros(4, 1), torch.zeros(4, 1, 1), torch.zeros(4, 1), ["img 7", "img 2", "img 5", "img 0"],
                             indices=[7, 2, 5, 0])
    val = validation_images(train, batch, 5)
    assert list(val.captions) == ["img 1", "img 3", "img 4", "img 6", "img 8"]
    assert validation_images(train, batch.subset(2), 100).captions[-1] == "img 9"
    full = CalibrationBatch(torch.zeros(10, 1), torch.zeros(10, 1, 1), torch.zeros(10, 1), [""] * 10, list(range(10)))
    assert validation_images(train, full, 5) is None


def test_importing_profiler_is_light():
    code = ("import sys, profiler; assert 'torch' not in sys.modules and 'scipy' not in sys.modules; "
            "assert 'profile_bits' in dir(profiler)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).parents[3]))
    import profiler
    from profiler.mpq.profile import profile_bits

    assert profiler.profile_bits is profile_bits  # resolved lazily, on first use
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        profiler.nope
