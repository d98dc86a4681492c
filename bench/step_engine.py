"""The trainer's optimizer step rebuilt on one device for the bench: engine, batches, step.

The engine comes from pretrain.engine.build_engine and the loss from summed_token_loss, so the
bench times the code the trainer runs. Building and releasing engines lives here too, because
an out-of-memory context must give all of its memory back before the next one starts.
"""
from __future__ import annotations

import gc


def single_process_parallel():
    """`pretrain.parallel.initialize_parallel(1)`; without megatron-core (a bare GPU machine), the
    same one-process group and no mpu, which is all DeepSpeed needs on one rank (ZeRO 0-2)."""
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        from types import SimpleNamespace

        from pretrain.parallel import ensure_process_group

        print("[train_step] megatron-core not installed: one process group without an mpu", flush=True)
        ensure_process_group(backend=None, timeout_s=None)
        return SimpleNamespace(dp_size=1, mpu=None, prepare_model_for_deepspeed=lambda model, ds_config: model)
    from pretrain.parallel import initialize_parallel

    return initialize_parallel(1)


def build_bench_engine(spec, args, parallel, micro_batch: int, grad_accum: int, device):
    """The trainer's DeepSpeed engine for `spec` (a step_models.ModelSpec), seeded, in train mode."""
    import torch

    from pretrain.config import TrainConfig
    from pretrain.engine import build_engine

    train_cfg = TrainConfig(zero_stage=args.zero_stage, activation_checkpointing=spec.activation_checkpointing,
                            dtype="auto", lr=6e-4, betas=[0.9, 0.95], weight_decay=0.1, grad_clip=1.0)
    torch.manual_seed(0)
    with torch.device(device):
        model = spec.build()
    engine, _ = build_engine(model, train_cfg, parallel, micro_batch, grad_accum)
    engine.train()
    return engine


def release_engine(engine) -> None:
    """Drop an engine and give its memory back (DeepSpeed's hooks hold references to it)."""
    import torch

    if engine is not None and hasattr(engine, "destroy"):
        try:
            engine.destroy()
        except Exception as error:  # noqa: BLE001 - best effort after an OOM
            print(f"[train_step] engine.destroy() failed: {type(error).__name__}: {error}", flush=True)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def synthetic_batches(vocab_size: int, micro_batch: int, grad_accum: int, context_len: int, device, seed: int,
                      document_len: int = 0):
    """grad_accum micro-batches of random tokens, their next-token labels, and the position ids
    and document starts the trainer's packed rows carry (documents of `document_len` tokens;
    0 = one document per row), on `device`."""
    import torch

    from pretrain.engine import IGNORE_INDEX

    generator = torch.Generator(device="cpu").manual_seed(seed)
    length = document_len or context_len
    offsets = torch.arange(context_len) % length
    batches = []
    for _ in range(grad_accum):
        ids = torch.randint(0, vocab_size, (micro_batch, context_len), generator=generator)
        labels = torch.roll(ids, -1, dims=1)
        labels[:, (offsets == length - 1) | (torch.arange(context_len) == context_len - 1)] = IGNORE_INDEX
        batch = {"input_ids": ids, "labels": labels, "position_ids": offsets.expand(micro_batch, -1).clone(),
                 "document_starts": (offsets == 0).expand(micro_batch, -1).clone()}
        batches.append({name: x.to(device) for name, x in batch.items()})
    return batches


def make_step(engine, batches, tokens: int, trainer_host_path: bool = False, model_inputs: bool = True):
    """One optimizer step as the trainer does it; returns the summed loss tensor.

    The model gets what pretrain/train.py hands it (position ids and document starts) when
    `model_inputs`; a model without them (the Transformer baseline) gets the ids only. By
    default nothing waits for the device inside the step. With `trainer_host_path` the step also
    does what pretrain/train.py does on the host around the engine: batches start in host memory
    and are copied per micro-batch, loss tokens are counted on the host, the loss is summed on
    the device and read with the gradient norm once at the step's end (each read waits for the
    device)."""
    import torch

    from bench.step_profile import BACKWARD_RANGE, FORWARD_RANGE, OPTIMIZER_RANGE
    from pretrain.engine import IGNORE_INDEX, summed_token_loss

    scale = 1.0 / tokens
    device = engine.device

    def step():
        total = None
        host_loss = torch.zeros((), dtype=torch.float64, device=device)
        if trainer_host_path:
            loss_tokens = sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch in batches)
        for index, batch in enumerate(batches):
            engine.set_gradient_accumulation_boundary(index == len(batches) - 1)
            if trainer_host_path:
                batch = {name: x.to(device) for name, x in batch.items()}
            extra = ({"position_ids": batch["position_ids"], "document_starts": batch["document_starts"]}
                     if model_inputs else {})
            with torch.profiler.record_function(FORWARD_RANGE):
                loss = summed_token_loss(engine(batch["input_ids"], **extra), batch["labels"])
            with torch.profiler.record_function(BACKWARD_RANGE):
                engine.backward(loss * scale, scale_wrt_gas=False)
            total = loss.detach() if total is None else total + loss.detach()
            if trainer_host_path:
                host_loss += loss.detach().double()
        with torch.profiler.record_function(OPTIMIZER_RANGE):
            engine.step()
        if trainer_host_path:                          # the trainer's two reads per step
            grad_norm = engine.get_global_grad_norm()
            float(host_loss) / loss_tokens, None if grad_norm is None else float(grad_norm)
        return total
    return step
