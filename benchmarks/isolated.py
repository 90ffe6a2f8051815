"""What the benchmarks share: every measured variant runs in a fresh process, so that no warm cache, thread
pool or allocator state passes from one variant to the next, and reports one JSON line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def run_variants(script: str, variants: Sequence[str], args: argparse.Namespace, flags: Sequence[str]) -> dict:
    """Run `script --run-one VARIANT --flag value ...` for each variant (the flags copied from `args`) and
    return each variant's last printed line, parsed as JSON."""
    rows = {}
    for variant in variants:
        command = [sys.executable, script, "--run-one", variant]
        for flag in flags:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{variant} failed:\n{done.stderr}")
        rows[variant] = json.loads(done.stdout.splitlines()[-1])
    return rows


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a timer read afterwards includes it."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> float:
    """The variant's peak memory: the GPU's allocated peak in GiB on CUDA, else the process's resident peak in GB."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def auto_precision_name() -> str:
    """What `"precision": "auto"` resolves to on this CPU: "bfloat16" or "fp32"."""
    import torch

    from electra.trainer import resolve_precision

    return str(resolve_precision("auto", torch.device("cpu")) or "fp32").removeprefix("torch.")
