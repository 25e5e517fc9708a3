"""Peak-memory estimates of fine-tuning runs from configs and safetensors headers (no weights read).

    from finetune.estimate import estimate_memory
    est = estimate_memory("path/to/sd15", "lora", {"batch_size": 1}, device="cuda")
    est.low_bytes, est.expected_bytes, est.high_bytes, est.terms

See :mod:`finetune.estimate.core` for the terms and :mod:`finetune.estimate.dryrun` for the fake-tensor step.
"""
from finetune.estimate.core import (BAND, DEVICE_OFFSET, SLACK, MemoryEstimate, estimate_from_description,
                                    estimate_memory)
from finetune.estimate.describe import (describe_components, describe_hub, describe_model,
                                        read_safetensors_header)

__all__ = ["MemoryEstimate", "estimate_memory", "estimate_from_description", "describe_components",
           "describe_hub", "describe_model", "read_safetensors_header", "DEVICE_OFFSET", "SLACK", "BAND"]
