"""Process groups for data x context parallelism, and the adapter that hands them to DeepSpeed.

Groups come from megatron-core `parallel_state.initialize_model_parallel(context_parallel_size=CP)`
(order tp-cp-ep-dp-pp: the CP ranks of one replica are adjacent global ranks). Tensor and
pipeline parallel are 1 today; every size below is read from parallel_state, never derived as
world_size / CP, so that growing them later changes nothing here.

Gradient scaling with context parallelism (the trainer must do this). DeepSpeed, given this
mpu, reduces gradients over the data x context group (DP*CP ranks) with a SUM and divides by a
`gradient divisor`: the data-parallel size for ZeRO 0/1/2, but DP*CP for ZeRO-3's reduce-scatter
path (DeepSpeed 0.19.8, stage3.py `__avg_scatter_grads`; measured by the DP x CP tests). The
gradient of the mean loss over the whole global batch is obtained when each rank backpropagates

    loss_rank = (sum of token losses on this rank) * divisor / (token count of the global batch)

which `ParallelContext.loss_scale(global_token_count, ds_config)` gives (the count comes from
`ParallelContext.global_token_count`). A per-rank mean would weight ranks with few loss tokens
too much and, with CP > 1, be off by a factor CP.

Each CP rank holds one contiguous slice of the sequence (`split_sequence_for_cp`), not
Megatron's load-balanced 2 x CP layout, because recurrent state passing needs slices in order.
"""

import contextlib
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist


class ParallelConfigError(ValueError):
    """A parallel layout that cannot work here (sizes that do not divide, bad lengths)."""

    user_facing = True


def _parallel_state():
    """megatron-core's parallel_state; its package import warns about optional fused kernels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core import parallel_state
    return parallel_state


class DeepSpeedMpu:
    """The `mpu` DeepSpeed expects, backed by megatron-core parallel_state.

    DeepSpeed 0.19 reads: data-parallel getters (used for batch-size arithmetic: DP excludes
    CP), model-parallel getters (tensor x pipeline), and the sequence-parallel and
    sequence-data-parallel getters. Context parallelism is exposed as DeepSpeed's sequence
    parallelism, so ZeRO shards and reduces over the DP x CP group. There is deliberately no
    `initialize_sequence_parallel` method: DeepSpeed takes its presence to mean a Ulysses mpu
    and then ignores the data-parallel getters.
    """

    def __init__(self, parallel_state=None):
        self._ps = parallel_state or _parallel_state()

    # data parallel (replicas of the model that see different samples; CP excluded)
    def get_data_parallel_group(self):
        return self._ps.get_data_parallel_group()

    def get_data_parallel_rank(self) -> int:
        return self._ps.get_data_parallel_rank()

    def get_data_parallel_world_size(self) -> int:
        return self._ps.get_data_parallel_world_size()

    def get_data_parallel_group_ranks(self) -> List[int]:
        return dist.get_process_group_ranks(self.get_data_parallel_group())

    # model parallel (tensor x pipeline)
    def get_model_parallel_group(self):
        return self._ps.get_model_parallel_group()

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank(group=self.get_model_parallel_group())

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size(group=self.get_model_parallel_group())

    def get_tensor_model_parallel_group(self):
        return self._ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return self._ps.get_tensor_model_parallel_world_size()

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_src_rank()

    def get_pipeline_model_parallel_group(self):
        return self._ps.get_pipeline_model_parallel_group()

    def get_pipeline_model_parallel_rank(self) -> int:
        return self._ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self._ps.get_pipeline_model_parallel_world_size()

    # context parallel, in DeepSpeed's words
    def get_sequence_parallel_group(self):
        return self._ps.get_context_parallel_group()

    def get_sequence_parallel_rank(self) -> int:
        return self._ps.get_context_parallel_rank()

    def get_sequence_parallel_world_size(self) -> int:
        return self._ps.get_context_parallel_world_size()

    def get_sequence_data_parallel_group(self):
        return self._ps.get_data_parallel_group(with_context_parallel=True)

    def get_sequence_data_parallel_rank(self) -> int:
        return self._ps.get_data_parallel_rank(with_context_parallel=True)

    def get_sequence_data_parallel_world_size(self) -> int:
        return self._ps.get_data_parallel_world_size(with_context_parallel=True)


@dataclass(frozen=True)
class ParallelContext:
    """Everything the trainer needs about this rank's place in the data x context grid."""

    world_size: int
    rank: int
    dp_rank: int
    dp_size: int
    dp_group: Any
    cp_rank: int
    cp_size: int
    cp_group: Any
    dp_cp_group: Any
    mpu: DeepSpeedMpu

    def split_sequence(self, tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous slice of a full-length sequence tensor."""
        return split_sequence_for_cp(tensor, self.cp_rank, self.cp_size, dim=dim)

    def prepare_model_for_deepspeed(self, model: torch.nn.Module, ds_config: dict) -> torch.nn.Module:
        """Call before `deepspeed.initialize(model, config=ds_config, mpu=self.mpu)`.

        For ZeRO-3 this partitions the parameters over the DP x CP group. DeepSpeed 0.19 left
        alone converts a model built outside `zero.Init` over `mpu.get_data_parallel_group()`
        (DP only), and then never reduces gradients over the CP ranks: each CP rank would step
        on its own slice's gradient (caught by tests/context_parallel/test_deepspeed_dp_cp.py).
        Other stages need nothing; the model is returned unchanged.
        """
        if int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3:
            import deepspeed

            deepspeed.zero.Init(module=model, data_parallel_group=self.dp_cp_group,
                                config_dict_or_path=ds_config, mpu=self.mpu)
        return model

    def loss_scale(self, global_token_count: int, ds_config: dict) -> float:
        """Multiply this rank's summed token loss by this before `engine.backward` (module doc)."""
        divisor = deepspeed_gradient_divisor(ds_config, self.dp_size, self.cp_size)
        return deepspeed_loss_scale(global_token_count, divisor)

    def global_token_count(self, local_count) -> int:
        """Sum of a per-rank token count over every data and context parallel rank."""
        total = torch.as_tensor(local_count, dtype=torch.float64).reshape(1)
        if self.world_size > 1:
            total = total.to(collective_device(self.dp_cp_group))
            dist.all_reduce(total, group=self.dp_cp_group)
        return int(total.item())


def deepspeed_gradient_divisor(ds_config: dict, dp_size: int, cp_size: int) -> int:
    """What DeepSpeed 0.19 divides the DP x CP gradient sum by, for this DeepSpeed config.

    ZeRO 0/1/2 divide by `world / sequence_parallel_size` = DP. ZeRO-3 with reduce-scatter
    (its default) pre-divides by the whole partition group, DP*CP; ZeRO-3 without it picks per
    bucket (contiguous buckets under reduce_bucket_size divide by DP, the others by DP*CP), so
    that combination is refused under CP.
    """
    zero = ds_config.get("zero_optimization") or {}
    if int(zero.get("stage", 0)) != 3 or cp_size == 1:
        return dp_size
    if zero.get("reduce_scatter", True) or not zero.get("contiguous_gradients", True):
        return dp_size * cp_size
    raise ParallelConfigError(
        "ZeRO-3 with zero_optimization.reduce_scatter=false averages gradients inconsistently "
        "across buckets under context parallelism (DeepSpeed 0.19); keep reduce_scatter=true "
        "or use context_parallel_size=1"
    )


def deepspeed_loss_scale(global_token_count: int, gradient_divisor: int) -> float:
    """Factor for a rank's summed token loss so DeepSpeed's step equals the global-mean gradient."""
    if global_token_count <= 0:
        raise ParallelConfigError(
            "the global batch has no loss tokens (every label is -100); check the data's loss "
            "mask or the formatter settings"
        )
    return float(gradient_divisor) / float(global_token_count)


def split_sequence_for_cp(tensor: torch.Tensor, cp_rank: int, cp_size: int, dim: int = 1) -> torch.Tensor:
    """The contiguous slice `cp_rank` of `cp_size` equal slices of `tensor` along `dim`.

    Used for input_ids, labels and position_ids. Slices must be equal in length (every rank
    runs the same kernels) and in order (rank r holds tokens [r*L, (r+1)*L)), so a length that
    CP does not divide is an error rather than a silent pad.
    """
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ParallelConfigError(f"context-parallel rank {cp_rank} is not in [0, {cp_size})")
    length = tensor.shape[dim]
    if length % cp_size != 0:
        raise ParallelConfigError(
            f"sequence length {length} is not divisible by parallel.context_parallel_size="
            f"{cp_size}; choose a context length that is a multiple of {cp_size} (each rank "
            f"holds an equal contiguous slice)"
        )
    local = length // cp_size
    return tensor.narrow(dim, cp_rank * local, local)


def collective_device(group=None) -> torch.device:
    """The device tensors must live on for collectives of `group` (CUDA for NCCL, which
    rejects CPU tensors; CPU for gloo)."""
    if dist.get_backend(group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def ranks_with(flag: bool) -> list[int]:
    """The ranks of the default group where `flag` holds (a collective over all ranks), e.g. so
    that every rank stops, or fails, together when one of them must."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [0] if flag else []
    flags = torch.zeros(dist.get_world_size(), device=collective_device())
    flags[dist.get_rank()] = 1.0 if flag else 0.0
    dist.all_reduce(flags)
    return [rank for rank, value in enumerate(flags.tolist()) if value > 0]


def ensure_process_group(backend: Optional[str], timeout_s: Optional[float]) -> None:
    """Join the default process group from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT, or
    make a one-process group when those are unset (so single-process runs use the same path).

    `timeout_s` bounds every collective of the group (and the rendezvous): a rank whose peer
    died or hangs fails after that long instead of waiting forever. None = torch's default."""
    if dist.is_initialized():
        return
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    if "WORLD_SIZE" in os.environ:
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ParallelConfigError(
                f"WORLD_SIZE is set but {', '.join(missing)} is not; set all of RANK, WORLD_SIZE, "
                f"MASTER_ADDR, MASTER_PORT (or none of them for a single process)"
            )
        dist.init_process_group(backend, init_method="env://", **timeout)
    else:
        # one process: an in-memory store, no port to pick (and lose to another socket)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **timeout)


def initialize_parallel(context_parallel_size: int = 1, backend: Optional[str] = None,
                        collective_timeout_s: Optional[float] = None) -> ParallelContext:
    """Set up (or reuse) the data x context parallel groups and return this rank's view.

    Joins the default process group if needed (see `ensure_process_group`). Calling again with
    another context_parallel_size (a curriculum stage that grows CP) rebuilds the groups.
    `collective_timeout_s` (train.collective_timeout_s) applies to the default group and to the
    data / context groups, where the training step's collectives run.
    """
    if isinstance(context_parallel_size, bool) or not isinstance(context_parallel_size, int) or context_parallel_size < 1:
        raise ParallelConfigError(
            f"parallel.context_parallel_size must be a positive integer, got {context_parallel_size!r}"
        )
    if collective_timeout_s is not None and not collective_timeout_s > 0:
        raise ParallelConfigError(f"collective timeout {collective_timeout_s!r} s: must be > 0 "
                                  "(train.collective_timeout_s)")
    ensure_process_group(backend, collective_timeout_s)
    world_size = dist.get_world_size()
    if world_size % context_parallel_size != 0:
        raise ParallelConfigError(
            f"world size {world_size} is not divisible by parallel.context_parallel_size="
            f"{context_parallel_size}; use a context_parallel_size that divides the number of "
            f"processes (divisors of {world_size}: {_divisors(world_size)})"
        )
    ps = _parallel_state()
    if ps.model_parallel_is_initialized() and ps.get_context_parallel_world_size() != context_parallel_size:
        ps.destroy_model_parallel()
    if not ps.model_parallel_is_initialized():
        # gloo twins of the NCCL groups are only needed by Megatron's own optimizer; skip them.
        timeout = {} if collective_timeout_s is None else {"distributed_timeout_minutes": collective_timeout_s / 60}
        ps.initialize_model_parallel(context_parallel_size=context_parallel_size,
                                     create_gloo_process_groups=False, **timeout)
    return ParallelContext(
        world_size=world_size,
        rank=dist.get_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        dp_group=ps.get_data_parallel_group(),
        cp_rank=ps.get_context_parallel_rank(),
        cp_size=ps.get_context_parallel_world_size(),
        cp_group=ps.get_context_parallel_group(),
        dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True),
        mpu=DeepSpeedMpu(ps),
    )


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------- orderly shutdown
#
# A process that leaves its process groups to interpreter exit leaves gloo / NCCL / TCPStore
# C++ threads to static destruction, where a joinable std::thread aborts the process (SIGABRT,
# "terminate called without an active exception", seen after a finished ZeRO-3 resume:
# tests/RELIABILITY.md). Every entry that creates process groups runs inside
# `process_group_session()`, which tears them down on every exit path.

THREAD_JOIN_TIMEOUT_S = 10.0


def teardown_distributed(engine=None) -> None:
    """Release what a run set up, innermost first: the DeepSpeed engine (its ZeRO hooks and
    buffers), megatron-core's model-parallel groups, DeepSpeed's references to the groups, and
    torch's default group with every subgroup. Idempotent; a no-op when nothing was set up (also
    imports nothing that is not already loaded)."""
    # each step runs even if an earlier one failed; the first failure is raised at the end
    with contextlib.ExitStack() as steps:
        steps.callback(_destroy_torch_groups)
        steps.callback(_destroy_deepspeed_groups)
        steps.callback(_destroy_megatron_groups)
        steps.callback(_destroy_engine, engine)


def _destroy_engine(engine) -> None:
    if engine is not None and hasattr(engine, "destroy"):
        engine.destroy()


def _destroy_megatron_groups() -> None:
    ps = sys.modules.get("megatron.core.parallel_state")
    if ps is not None and ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()


def _destroy_deepspeed_groups() -> None:
    ds_comm = sys.modules.get("deepspeed.comm.comm")
    if ds_comm is not None and ds_comm.is_initialized():
        ds_comm.destroy_process_group()      # torch's destroy, plus DeepSpeed's group references


def _destroy_torch_groups() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ProcessGroupSession(contextlib.ExitStack):
    """What `process_group_session()` yields: an ExitStack for the run's own resources
    (`closing(metrics)`, `callback(fn)`), closed before the groups are destroyed, and `engine`,
    set by the entry once it has one so that it is destroyed first."""

    engine: Any = None


@contextlib.contextmanager
def process_group_session(join_timeout_s: float = THREAD_JOIN_TIMEOUT_S):
    """Run a training / evaluation / build entry so that, whether it returns, is preempted or
    raises: its registered resources are closed, the process groups it created are destroyed
    (`teardown_distributed`; groups that existed before the session are left to their
    owner), and the threads it started are joined (at most `join_timeout_s`
    in all; one still running is named on stderr, since it would block or abort the exit).
    The entry's own exception, if any, is what propagates."""
    threads_before = set(threading.enumerate())
    caller_owns_groups = dist.is_available() and dist.is_initialized()
    session = ProcessGroupSession()
    failed = True
    try:
        with session:
            yield session
        failed = False
    finally:
        try:
            if caller_owns_groups:       # groups made by the caller are the caller's to destroy
                _destroy_engine(session.engine)
            else:
                teardown_distributed(session.engine)
        except Exception as error:  # noqa: BLE001 - after an error, that error is the one to report
            if not failed:
                raise
            print(f"warning: the teardown after the error failed as well: {type(error).__name__}: {error}",
                  file=sys.stderr, flush=True)
        finally:
            join_threads_started_since(threads_before, join_timeout_s)


def join_threads_started_since(threads_before: set, timeout_s: float) -> list:
    """Join the threads that are alive now but were not in `threads_before`; returns (and
    reports on stderr) the ones still alive after `timeout_s` in all."""
    deadline = time.monotonic() + timeout_s
    left = []
    for thread in threading.enumerate():
        if thread in threads_before or thread is threading.current_thread():
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            left.append(thread)
    if left:
        names = ", ".join(f"{t.name}{' (daemon)' if t.daemon else ''}" for t in left)
        print(f"warning: threads still running after the run's teardown: {names}", file=sys.stderr, flush=True)
    return left
