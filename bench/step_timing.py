"""How the training-step bench times work on a device, and the matmul ceiling MFU is taken against.

One timer for the ceiling and the steps, so both are measured the same way: on CUDA from
events with one synchronisation before and after the calls, elsewhere from the wall clock.
"""
from __future__ import annotations

import statistics
import time


def time_calls(fn, reps: int, device) -> list[float]:
    """Seconds per call; on CUDA from events, synchronising only before and after the calls."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
        events[0].record()
        for index in range(reps):
            fn()
            events[index + 1].record()
        torch.cuda.synchronize(device)
        return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(reps)]
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_matmul_ceiling(device, dtype, sizes, reps: int) -> dict:
    """Best TFLOP/s of square matmuls (2 n^3 FLOPs each) on this device, in this process."""
    import torch

    best = {"tflops": 0.0, "size": None, "dtype": str(dtype).replace("torch.", "")}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        seconds = time_calls(lambda: a @ b, reps, device)
        tflops = 2 * n ** 3 / statistics.median(seconds) / 1e12
        if tflops > best["tflops"]:
            best.update(tflops=tflops, size=n)
        del a, b
    return best
