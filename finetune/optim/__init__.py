"""Memory-efficient mixed-precision optimizers (Lewandowski & Kosson, arXiv 2309.12381).

    from finetune.optim import RemainderAdamW
    opt = RemainderAdamW(model.parameters(), lr=1e-4, step_in_backward=True)   # model is now bfloat16
    for batch in loader:
        loss = model(batch).mean()
        loss.backward()          # parameters are updated here, gradients freed one by one
        opt.step()               # no-op with step_in_backward; kept so loops need no special case
        opt.zero_grad()
"""
from finetune.optim.bf16_split import merge_fp32, round_to_bf16, split_fp32
from finetune.optim.fp32_master import Fp32MasterAdamW
from finetune.optim.remainder_adamw import RemainderAdamW, adamw_update_

__all__ = ["RemainderAdamW", "Fp32MasterAdamW", "split_fp32", "merge_fp32", "round_to_bf16", "adamw_update_"]
