"""Fixtures of the Hub tests: tiny diffusers repos (built once per session) served by a :class:`FakeHub`,
and an environment in which huggingface_hub talks to it (endpoint, online, a private HF cache).

``/work/wt/py`` and tests/conftest.py set ``HF_HUB_OFFLINE=1``; huggingface_hub reads it once, at import,
into ``constants.HF_HUB_OFFLINE`` (which ``is_offline_mode()`` returns), so the fixture patches that
constant as well as the environment. The product reads ``HF_ENDPOINT`` at call time.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fakehub import FakeHub  # noqa: E402

REPOS = ("tiny/sd", "tiny/pixart", "tiny/sd-finetune", "tiny/sd-lora", "tiny/gated", "tiny/pickle-only")


def _finetune_conftest():
    """tests/finetune/conftest.py as a module (its tiny SD pipeline and offline CLIP tokenizer)."""
    path = Path(__file__).parents[2] / "finetune" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_finetune_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _card(folder: Path, description: str, **meta) -> None:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    front = yaml.safe_dump({"library_name": "diffusers", **meta}, sort_keys=True)
    (folder / "README.md").write_text(f"---\n{front}---\n\n# {folder.name}\n\n{description}\n")


def _tiny_sd(folder: Path, seed: int, safe: bool = True) -> None:
    import torch

    ft = _finetune_conftest()
    tok = ft.make_clip_tokenizer(folder.parent / f".tok-{folder.name}")
    pipe = ft.tiny_sd_pipeline(tok)
    if seed:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in pipe.unet.parameters():
                p.add_(0.01 * torch.randn_like(p))
    pipe.save_pretrained(str(folder), safe_serialization=safe)


@pytest.fixture(scope="session")
def hub_repos(tmp_path_factory) -> dict[str, Path]:
    """``{repo_id: folder}`` of the six tiny repos (see :data:`REPOS`)."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hub-repos")
    out = {r: root / r.replace("/", "--") for r in REPOS}
    _tiny_sd(out["tiny/sd"], 0)
    _card(out["tiny/sd"], "A tiny Stable-Diffusion-layout pipeline of colourful test shapes.", license="mit",
          tags=["text-to-image", "stable-diffusion"])
    _tiny_sd(out["tiny/sd-finetune"], 1)
    _card(out["tiny/sd-finetune"], "tiny/sd fine-tuned on more shapes.", license="mit", base_model="tiny/sd",
          tags=["text-to-image"])
    from tiny_models import tiny_model

    tiny_model("dit").pipeline.save_pretrained(str(out["tiny/pixart"]))
    _card(out["tiny/pixart"], "A tiny PixArt-layout transformer pipeline in pixel space.", license="apache-2.0",
          datasets=["tiny/shapes"])
    lora = out["tiny/sd-lora"]
    lora.mkdir(parents=True)
    save_file({"unet.down_blocks.0.attn.lora_A.weight": torch.zeros(4, 32),
               "unet.down_blocks.0.attn.lora_B.weight": torch.zeros(32, 4)}, str(lora / "pytorch_lora_weights.safetensors"))
    _card(lora, "A LoRA of tiny/sd.", license="mit", base_model="tiny/sd", base_model_relation="adapter")
    shutil.copytree(out["tiny/sd"], out["tiny/gated"], copy_function=shutil.copy2)
    _card(out["tiny/gated"], "A gated copy of tiny/sd.", license="other", extra_gated_prompt="Agree first.")
    _tiny_sd(out["tiny/pickle-only"], 2, safe=False)
    _card(out["tiny/pickle-only"], "Old-style pickle weights.", license="mit")
    return out


@pytest.fixture
def fake_hub(hub_repos, tmp_path, monkeypatch):
    """A started :class:`FakeHub` with the six repos, huggingface_hub pointed at it, online, with an empty
    HF cache under ``tmp_path``. Repo folders are copied, so a test may change them."""
    from huggingface_hub import constants

    downloads = {"tiny/sd": 600, "tiny/pixart": 500, "tiny/sd-finetune": 400, "tiny/sd-lora": 300,
                 "tiny/gated": 200, "tiny/pickle-only": 100}
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub(page_size=2) as hub:
        for repo, folder in hub_repos.items():
            copy = tmp_path / "served" / folder.name
            shutil.copytree(folder, copy, copy_function=_link_or_copy)
            hub.add(repo, copy, downloads=downloads[repo], gated="manual" if repo == "tiny/gated" else False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


def _link_or_copy(src, dst):
    """Hard-link the big weight files (read-only here), copy the small ones a test may edit."""
    import os

    if Path(src).stat().st_size > 1 << 20:
        try:
            return os.link(src, dst)
        except OSError:
            pass
    return shutil.copy2(src, dst)
