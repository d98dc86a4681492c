"""Run in a fresh interpreter: load an export with DeepSpeed, Megatron, submitit and WebDataset
made unimportable, and save the model's logits on the probe batch.

usage: python load_without_training_stack.py EXPORT_DIR OUT.pt VOCAB_SIZE [COMPUTE_DTYPE]
(COMPUTE_DTYPE float32 upcasts stored bf16 weights, so only the export's rounding remains.)
"""
import sys

BLOCKED = ("deepspeed", "megatron", "megatron.core", "submitit", "webdataset")
for name in BLOCKED:
    sys.modules[name] = None  # `import deepspeed` now raises ImportError

import torch  # noqa: E402

from deepspeed_checkpoint import probe_batch  # noqa: E402
from modeling.inference import load  # noqa: E402


def main(export_dir: str, out: str, vocab_size: int, compute_dtype: str | None) -> None:
    model = load(export_dir, dtype=getattr(torch, compute_dtype) if compute_dtype else None)
    with torch.no_grad():
        logits = model.model(probe_batch(vocab_size)).float()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"deepspeed", "megatron", "submitit", "webdataset"}
                    and sys.modules[m] is not None)
    torch.save({"logits": logits, "training_stack_modules": loaded,
                "dtype": str(next(model.model.parameters()).dtype)}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
