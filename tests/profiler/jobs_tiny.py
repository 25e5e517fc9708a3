"""A very small zoo-like pipeline saved as a local diffusers folder, for the profiling-job tests.

Four UNet levels of 8 channels (cross-attention at 4×4 only) on the zoo's 32×32 pixels and MiniLM text:
a whole profiling job (2 steps, held-out loss before and after) costs ~1 s of one core.
"""
from __future__ import annotations

from pathlib import Path

#: Method-config overrides of the test jobs.
CFG = {"steps": 2, "batch_size": 16, "lr": 1e-3}


def tiny_folder(base: Path) -> str:
    """``base/profiler-tiny-unet`` (built once; later calls reuse it)."""
    path = Path(base) / "profiler-tiny-unet"
    if (path / "model_index.json").is_file():
        return str(path)
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, BertModel

    from data.text import minilm_path
    from finetune.pipeline import MandcPixelPipeline
    from finetune.zoo.specs import SCHEDULER_CONFIG, unet

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_max_length = 8
    den = UNet2DConditionModel(**unet((8, 8, 8, 8), layers=1, head_dim=8, groups=4))
    pipe = MandcPixelPipeline(scheduler=DDPMScheduler(**SCHEDULER_CONFIG), tokenizer=tok,
                              text_encoder=BertModel.from_pretrained(minilm_path()), unet=den)
    tmp = path.with_name(path.name + ".tmp")
    pipe.save_pretrained(str(tmp))
    tmp.rename(path)
    return str(path)
