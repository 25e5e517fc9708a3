"""finetune.schedules: timestep windows carried across noise schedules by ᾱ_t (SNR)."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from finetune.schedules import SD15_SCHEDULER, alphas_cumprod, snr_matched_window
from finetune.zoo.specs import SCHEDULER_CONFIG

SD15 = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@pytest.mark.parametrize("window", [(500, 900), (0, 1000), (1, 2), (123, 457), (999, 1000)])
def test_identity_on_sd15(window):
    """On SD 1.5's own schedule (a scheduler, or its config; DDIM's ᾱ equals DDPM's) every window maps to itself."""
    assert snr_matched_window(SD15, window) == window
    assert snr_matched_window(dict(SD15.config), window) == window
    assert snr_matched_window(DDIMScheduler.from_config(SD15.config), window) == window


def test_the_paper_window_on_the_zoo_cosine_schedule():
    """SD 1.5's 500–899 is the zoo's 644–922: the same ᾱ range, and the largest window inside it."""
    zoo = DDPMScheduler(**SCHEDULER_CONFIG)
    lo, hi = snr_matched_window(zoo, (500, 900))
    assert (lo, hi) == (644, 923)
    ref, ac = alphas_cumprod(SD15_SCHEDULER), alphas_cumprod(zoo)
    assert ac[lo] <= ref[500] < ac[lo - 1]          # lo: the first zoo step at least as noisy as SD 1.5's t=500
    assert ac[hi] < ref[899] <= ac[hi - 1]          # hi − 1: the last zoo step no noisier than SD 1.5's t=899
    # mapped back it stays inside the paper's window (one zoo step spans ~1.7 SD 1.5 steps there)
    back = snr_matched_window(SD15, (lo, hi), reference=zoo)
    assert 500 <= back[0] <= 502 and 898 <= back[1] <= 900


def test_clamped_and_bad_input():
    """A window noisier than every step of a schedule still keeps one step; bad windows and schedules fail."""
    short = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-5, beta_end=1e-4)  # ᾱ stays above SD 1.5's ᾱ_900
    lo, hi = snr_matched_window(short, (900, 1000))
    assert (lo, hi) == (999, 1000)
    with pytest.raises(ValueError, match="window"):
        snr_matched_window(SD15, (900, 900))
    with pytest.raises(ValueError, match="alphas_cumprod"):
        snr_matched_window(torch.nn.Identity(), (500, 900))
