"""One training loop for pre-training and fine-tuning.

A trainable model returns, for a batch, *sums* of its losses and metrics (`model(batch)`) and says
which *count* divides each (`model.normalizers`, `model.counts(batch)`) and how losses combine
(`model.loss_weights`). The loop adds the counts over all micro-batches and processes before the
first backward pass, so gradient accumulation and data parallelism give the gradient of the mean
over the whole global batch, exactly as one process with one big batch would.

The loop never loses work: checkpoints (weights as safetensors, optimizer state, step) are written
to a temporary folder and renamed into place, and re-running the same command resumes from the
newest. Randomness is a function of (seed, step, rank), so a resumed run on CPU reproduces the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn
from tqdm import tqdm

from electra.errors import UserError
from electra.fileio import atomic_directory, is_temporary, write_text_atomic

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}\d+")
NO_DECAY_MARKERS = ("LayerNorm", "layer_norm", "bias")  # as the reference's exclude_from_weight_decay


@dataclass
class TrainSettings:
    learning_rate: float
    num_train_steps: int
    batch_size: int  # examples per optimizer step, over all processes and micro-batches
    num_warmup_steps: int = 0
    lr_decay_power: float = 1.0
    weight_decay_rate: float = 0.01
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    save_checkpoints_steps: int = 1000
    keep_checkpoint_max: int = 5
    seed: int = 0
    precision: str = "auto"
    compile: bool | str = False  # true, or a torch.compile mode
    log_every_steps: int = 10
    max_nonfinite_steps: int = 20
    adam_bias_correction: bool = True
    # Run each micro-batch as this many pieces of similar-length examples, each padded only to its own
    # longest: the step still sees the same examples with the same loss normalisation, with less padding.
    length_groups: int = 1

    @classmethod
    def from_config(cls, config: Any, **values: Any) -> TrainSettings:
        """Settings taken from the same-named hparams of a pre-training or fine-tuning config."""
        names = {item.name for item in dataclasses.fields(cls)} - set(values)
        return cls(**{name: getattr(config, name) for name in names if hasattr(config, name)}, **values)


class TrainingTask(Protocol):
    """Where batches come from: a function of the step, so resuming needs only the step number."""

    def batch_indices(self, step: int) -> np.ndarray: ...

    def example_lengths(self, indices: np.ndarray) -> np.ndarray: ...

    def make_batch(
        self, indices: np.ndarray, rows: np.ndarray, total_rows: int, noise_seed: int, device: torch.device
    ) -> Any:
        """The examples at positions `rows` of the step's global batch `indices` (`total_rows` long)."""


def to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A batch array on the device. To a GPU through pinned memory and without waiting: a copy from pageable
    memory makes the host wait until the GPU has finished all queued work, so the next step could not be
    launched while this one runs."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------- processes
@dataclass
class Processes:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


# How long a process on gloo waits at exit for the worker threads to let go of finished collectives (see
# _leave_process_group). Two processes on a 2-core machine kept busy by two other processes: 5 runs of 156 aborted
# without it, 0 of 80 with it.
GLOO_DRAIN_SECONDS = 0.2


def setup_processes() -> Processes:
    """One process, or one of several started by torchrun (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        # The first process evaluates and exports while the others wait in a collective: longer than NCCL's
        # default 10 minutes on a large dev set (SQuAD), which would end the run.
        timeout = datetime.timedelta(hours=2)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        atexit.register(_leave_process_group)
    return Processes(rank=int(os.environ.get("RANK", "0")), world_size=world_size, device=device)


def _leave_process_group() -> None:
    """Leave the process group while Python is still whole, as PyTorch asks of every process.

    On gloo, also give its worker threads a moment before Python shuts down. A collective that DistributedDataParallel
    starts during backward keeps a reference to a Python object (the contextvars.Context that backward stashes in
    thread-local state), and the worker thread that ran it drops that reference a little after the main thread saw
    the collective finish. On a busy machine that can be after Python has begun to shut down; the thread then cannot
    take the GIL and the whole process aborts ("terminate called without an active exception", SIGABRT) after its
    work is done, failing the torchrun (pytorch/pytorch#190489). Sleeping releases the GIL, so the threads finish.
    """
    if not dist.is_initialized():
        return
    uses_gloo = dist.get_backend() == "gloo"
    dist.destroy_process_group()
    if uses_gloo:
        time.sleep(GLOO_DRAIN_SECONDS)


def derived_seed(*parts: int | str) -> int:
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AMX or AVX512-BF16), where bf16 autocast is 1.5-2x faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: with "auto", bf16 on GPUs and CPUs that have fast bf16; None means float32 throughout."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


# ----------------------------------------------------------------------------------------------- optimisation
class AdamWeightDecay(torch.optim.Optimizer):
    """The reference's AdamWeightDecayOptimizer (betas 0.9/0.999, eps 1e-6, decoupled weight decay).

    update = m / (sqrt(v) + eps) + weight_decay x param;  param -= lr x update.  The reference has no
    bias correction; that is harmless after its 10,000 warm-up steps but, with a short warm-up, makes
    the first few hundred updates several times too large (the discriminator then collapses to
    predicting the prior), so `bias_correction` (on by default) applies Adam's correction of m and v.
    Each group's learning rate is the schedule's value times its `lr_scale` (layer-wise decay).
    """

    def __init__(
        self,
        param_groups: list[dict],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        bias_correction: bool = True,
    ):
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": 0.0,
            "lr_scale": 1.0,
            "bias_correction": bias_correction,
            "step": 0,
        }
        super().__init__(param_groups, defaults)

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            grads = [param.grad for param in params]
            for param in params:
                if not self.state[param]:
                    self.state[param] = {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}
            means = [self.state[param]["exp_avg"] for param in params]
            squares = [self.state[param]["exp_avg_sq"] for param in params]
            beta1, beta2 = group["betas"]
            group["step"] += 1
            # m_hat / (sqrt(v_hat) + eps) == (c2 / c1) x m / (sqrt(v) + eps x c2), with c = 1 - beta^step
            first, second = (
                (1 - beta1 ** group["step"], (1 - beta2 ** group["step"]) ** 0.5)
                if group["bias_correction"]
                else (1.0, 1.0)
            )
            torch._foreach_lerp_(means, grads, 1 - beta1)
            torch._foreach_mul_(squares, beta2)
            torch._foreach_addcmul_(squares, grads, grads, value=1 - beta2)
            denominators = torch._foreach_sqrt(squares)
            torch._foreach_add_(denominators, group["eps"] * second)
            updates = torch._foreach_div(means, denominators)
            if second != first:
                torch._foreach_mul_(updates, second / first)
            if group["weight_decay"]:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, updates, alpha=-group["lr"] * group["lr_scale"])


def learning_rate_at(step: int, settings: TrainSettings) -> float:
    """Polynomial decay to 0 at num_train_steps (linear by default), times a linear warm-up from 0."""
    decay = (1 - min(step, settings.num_train_steps) / settings.num_train_steps) ** settings.lr_decay_power
    warmup = min(1.0, step / settings.num_warmup_steps) if settings.num_warmup_steps > 0 else 1.0
    return settings.learning_rate * decay * warmup


def default_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(marker in name for marker in NO_DECAY_MARKERS) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a folder is only ever renamed into place once complete)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    # By full name: a copy such as step-00000130.bak, or a temporary being written, is no checkpoint.
    found = [path for path in root.iterdir() if path.is_dir() and CHECKPOINT_NAME.fullmatch(path.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder (from `checkpoint_dirs`) was saved at."""
    return int(folder.name[len(CHECKPOINT_PREFIX) :])


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any], keep: int
) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    with atomic_directory(final) as tmp:
        try:
            save_model(model, str(tmp / "model.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "step": step, **extra}, tmp / "trainer_state.pt")
        except (RuntimeError, SafetensorError) as error:  # how torch and safetensors report a failed write
            free = shutil.disk_usage(root).free / 2**20
            raise UserError(
                f"could not write checkpoint {final} ({error}; {free:,.0f} MiB free there); the earlier checkpoints "
                "are intact: free some space, then run the same command again to resume"
            ) from None
        (tmp / "step.json").write_text(json.dumps({"step": step}) + "\n")
    if keep and keep > 0:
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def remove_unfinished_checkpoints(run_dir: Path) -> None:
    root = run_dir / "checkpoints"
    if root.is_dir():
        for path in root.iterdir():
            if is_temporary(path):
                shutil.rmtree(path, ignore_errors=True)


def damaged_checkpoint(folder: Path, error: Exception) -> UserError:
    return UserError(
        f"checkpoint {folder} is damaged ({str(error).splitlines()[0][:160]}): delete that folder, and the run "
        "resumes from the checkpoint before it"
    )


def load_checkpoint(model: nn.Module, folder: Path, map_location: torch.device | str) -> dict[str, Any]:
    """The weights of checkpoint `folder` into `model`; returns the rest of it (optimizer state, step, ...)."""
    load_weights(model, folder / "model.safetensors")
    try:
        return torch.load(folder / "trainer_state.pt", map_location=map_location, weights_only=True)
    except Exception as error:  # cut off or overwritten after it was renamed into place (a copy, a bad disk)
        raise damaged_checkpoint(folder, error) from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Weights from a safetensors file into `model`, with a clear error when shapes or names differ."""
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as error:
        detail = str(error).split("\n")[1:3]
        raise UserError(
            f"the weights in {path} do not fit this model ({' '.join(line.strip() for line in detail)}): "
            "use the same model_size and model_hparam_overrides as when they were saved"
        ) from None
    except Exception as error:  # not a safetensors file (any more): cut off or overwritten
        if path.parent.parent.name == "checkpoints":
            raise damaged_checkpoint(path.parent, error) from None
        raise UserError(f"cannot read weights from {path}: {str(error).splitlines()[0][:200]}") from None
    if missing or unexpected:
        raise UserError(
            f"the weights in {path} do not fit this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}; use the same objective and model settings"
        )


# ----------------------------------------------------------------------------------------------- logging
class MetricsLog:
    """metrics.jsonl (always) and TensorBoard event files (when the tensorboard package is installed)."""

    def __init__(self, log_dir: Path, resume_step: int, enabled: bool):
        self.path = log_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop what an interrupted run logged past the checkpoint it resumes from
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines()
                if (record := _complete_record(line)) is not None and record.get("step", 0) <= resume_step
            ]
            write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        # From the first step after the checkpoint: also a run that starts over drops the points of an earlier try.
        self.writer = SummaryWriter(str(log_dir), purge_step=resume_step + 1)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _complete_record(line: str) -> dict | None:
    """A logged line, or None for a blank one or the cut-off last line of a run stopped by a full disk or a
    power loss."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def _metric_name(sum_name: str) -> str:
    """`mlm_correct` is logged as `mlm_accuracy` once divided by its count."""
    return sum_name.replace("_correct", "_accuracy").replace("replaced", "replaced_share")


# ----------------------------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    step: int
    skipped_steps: int
    last_metrics: dict[str, float]


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        task: TrainingTask,
        settings: TrainSettings,
        run_dir: Path,
        processes: Processes,
        param_groups: list[dict] | None = None,
        description: str = "train",
        start_step: int = 0,
    ):
        self.model = model.to(processes.device)
        self.start_step = start_step  # where a run without checkpoints begins: a released model's step
        self.task = task
        self.settings = settings
        self.run_dir = run_dir
        self.processes = processes
        self.description = description
        per_process = settings.batch_size // processes.world_size
        if settings.batch_size % (processes.world_size * settings.gradient_accumulation_steps):
            raise UserError(
                f"train_batch_size {settings.batch_size} must be a multiple of processes "
                f"({processes.world_size}) x gradient_accumulation_steps "
                f"({settings.gradient_accumulation_steps})"
            )
        self.micro_batch = per_process // settings.gradient_accumulation_steps
        groups = param_groups or default_param_groups(self.model, settings.weight_decay_rate)
        self.optimizer = AdamWeightDecay(
            groups, lr=settings.learning_rate, bias_correction=settings.adam_bias_correction
        )
        self.autocast_dtype = resolve_precision(settings.precision, processes.device)
        self.skipped_steps = 0
        self.forward = self.model
        if processes.world_size > 1:
            device_ids = [processes.device.index] if processes.device.type == "cuda" else None
            self.forward = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if settings.compile:
            mode = None if settings.compile is True else settings.compile
            self.forward = torch.compile(self.forward, mode=mode)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.processes.device.type, dtype=self.autocast_dtype)

    def _micro_batches(self, step: int) -> list[Any]:
        indices = self.task.batch_indices(step)
        first = self.processes.rank * self.micro_batch * self.settings.gradient_accumulation_steps
        noise_seed = derived_seed(self.settings.seed, step, "noise")
        pieces = []
        for start in range(
            first, first + self.micro_batch * self.settings.gradient_accumulation_steps, self.micro_batch
        ):
            rows = np.arange(start, start + self.micro_batch)
            if self.settings.length_groups > 1:
                rows = rows[np.argsort(self.task.example_lengths(indices[rows]), kind="stable")]
                pieces += np.array_split(rows, min(self.settings.length_groups, len(rows)))
            else:
                pieces.append(rows)
        return [self.task.make_batch(indices, rows, len(indices), noise_seed, self.processes.device) for rows in pieces]

    def resume(self) -> int:
        """Load the newest checkpoint if there is one; returns the step to continue from."""
        if self.processes.is_main:
            remove_unfinished_checkpoints(self.run_dir)
        self.processes.barrier()
        found = checkpoint_dirs(self.run_dir)
        if not found:
            return self.start_step
        latest = found[-1]
        state = load_checkpoint(self.model, latest, self.processes.device)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except Exception as error:  # a state that is not this optimizer's: damaged
            raise damaged_checkpoint(latest, error) from None
        self.skipped_steps = int(state.get("skipped_steps", 0))
        return int(state["step"])

    def train(self) -> TrainResult:
        settings, processes, model = self.settings, self.processes, self.model
        step = self.resume()
        log = MetricsLog(self.run_dir / "logs", step, processes.is_main)
        found = checkpoint_dirs(self.run_dir)
        if step and processes.is_main:
            source = found[-1] if found else "the step its weights were trained to"
            print(f"resuming from step {step:,} ({source})", file=sys.stderr)
        params = [param for group in self.optimizer.param_groups for param in group["params"]]
        progress = tqdm(
            total=settings.num_train_steps,
            initial=step,
            desc=self.description,
            unit="step",
            disable=not processes.is_main or None,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        window = _Window()
        consecutive_bad, last_metrics = 0, {}
        last_good = next(reversed(found), None)
        self.forward.train()

        def batches_of(at: int) -> list[Any]:  # none past the last step
            return self._micro_batches(at) if at < settings.num_train_steps else []

        upcoming = batches_of(step)
        while step < settings.num_train_steps:
            torch.manual_seed(derived_seed(settings.seed, step, processes.rank))  # dropout
            batches = upcoming
            counts = self._global_counts(batches)
            for index, batch in enumerate(batches):
                last = index == len(batches) - 1
                no_sync = getattr(self.forward, "no_sync", None)
                with no_sync() if no_sync and not last else contextlib.nullcontext(), self._autocast():
                    sums = self.forward(batch)
                loss = processes.world_size * sum(
                    weight * sums[name] / counts[model.normalizers[name]]
                    for name, weight in model.loss_weights.items()
                    if name in sums
                )
                loss.backward()
                window.add_local({**sums, "loss": loss / processes.world_size})
            grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            # The next step's batch is read and queued before this step's gradient norm is awaited: on a GPU the host
            # prepares it while the device finishes the backward pass. (Batches draw no global random numbers.)
            upcoming = batches_of(step + 1)
            if torch.isfinite(grad_norm):
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate_at(step, settings)
                self.optimizer.step()
                consecutive_bad = 0
            else:
                self.skipped_steps += 1
                consecutive_bad += 1
                if consecutive_bad >= settings.max_nonfinite_steps:
                    progress.close()
                    raise UserError(
                        f"the loss was not finite for {consecutive_bad} steps in a row (up to step "
                        f"{step + 1}): training stopped. Last good checkpoint: {last_good or 'none'}. "
                        'Lower learning_rate, or use "precision": "fp32", and run the same command '
                        "again to resume from it"
                    )
            self.optimizer.zero_grad(set_to_none=True)
            window.add_global({"grad_norm": grad_norm, **{f"count:{name}": value for name, value in counts.items()}})
            window.steps += 1
            step += 1
            progress.update(1)
            done = step == settings.num_train_steps
            if step % settings.log_every_steps == 0 or done:
                last_metrics = self._summarise(window, step)
                log.write(step, last_metrics)
                progress.set_postfix(
                    loss=f"{last_metrics['loss']:.4f}",
                    tok_s=f"{last_metrics.get('tokens_per_second', 0):,.0f}",
                    refresh=False,
                )
                window = _Window()
            # No checkpoint in the middle of a run of skipped steps: the last one stays the last good one.
            if (step % settings.save_checkpoints_steps == 0 and not consecutive_bad) or done:
                if processes.is_main:
                    last_good = save_checkpoint(
                        self.run_dir,
                        step,
                        model,
                        self.optimizer,
                        {"skipped_steps": self.skipped_steps, "seed": settings.seed},
                        settings.keep_checkpoint_max,
                    )
                processes.barrier()
        progress.close()
        log.close()
        return TrainResult(step=step, skipped_steps=self.skipped_steps, last_metrics=last_metrics)

    def _global_counts(self, batches: list[Any]) -> dict[str, torch.Tensor]:
        """Each count summed over this step's micro-batches and processes (at least 1, to divide by)."""
        per_batch = [self.model.counts(batch) for batch in batches]
        names = list(per_batch[0])
        totals = torch.stack([sum(counts[name] for counts in per_batch).float() for name in names])
        return dict(zip(names, self.processes.all_reduce(totals).clamp_min(1.0), strict=True))

    def _summarise(self, window: _Window, step: int) -> dict[str, float]:
        local = window.local
        names = sorted(local)
        reduced = self.processes.all_reduce(torch.stack([local[name] for name in names])) if names else []
        totals = {
            **dict(zip(names, [float(value) for value in reduced], strict=True)),
            **{name: float(value) for name, value in window.global_.items()},
        }
        steps = window.steps
        metrics = {
            "loss": totals["loss"] / steps,
            "learning_rate": learning_rate_at(step - 1, self.settings),
            "grad_norm": totals["grad_norm"] / steps,
            "skipped_steps": float(self.skipped_steps),
        }
        for name, count_name in self.model.normalizers.items():
            if name in totals:
                metrics[_metric_name(name)] = totals[name] / totals[f"count:{count_name}"]
        if "count:tokens" in totals:
            metrics["tokens_per_second"] = totals["count:tokens"] / max(time.perf_counter() - window.started, 1e-9)
        return metrics


class _Window:
    """Running totals between two log lines: per-process sums (reduced when logged) and global values.

    Totals stay on the device until they are logged, so a step never waits for the GPU to report them.
    """

    def __init__(self) -> None:
        self.local: dict[str, torch.Tensor] = {}
        self.global_: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.started = time.perf_counter()

    @staticmethod
    def _add(target: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            # A copy, never the output itself: under CUDA graphs ("compile": "reduce-overhead") the next step
            # overwrites the graph's outputs in place.
            target[name] = target[name] + value if name in target else value.clone()

    def add_local(self, values: dict[str, torch.Tensor]) -> None:
        self._add(self.local, values)

    def add_global(self, values: dict[str, torch.Tensor]) -> None:
        self._add(self.global_, values)
