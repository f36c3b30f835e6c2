"""What a torch.profiler run says about GPU steps: kernel time by kind, the kernels that took the most, and
the host's own busiest operators. Shared by gpu_step_profile.py and trainer_throughput.py --profile."""

from __future__ import annotations

from typing import Any

import torch

# kernel kinds, by a word in the kernel's name (first match wins)
KINDS = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),  # before "cutlass": the mem-efficient kernel is fmha_cutlass
    ("matrix products", ("gemm", "nvjet", "xmma", "cutlass", "cublas")),
    ("dropout", ("dropout",)),
    ("casts and copies", ("copy", "memcpy")),
)


def kind_of(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, words in KINDS if any(w in name for w in words)), "the rest")


def short(kernel: str) -> str:
    """A kernel's name without the prefixes every ATen kernel shares, long enough to tell them apart."""
    for prefix in ("void ", "at::native::", "(anonymous namespace)::"):
        kernel = kernel.replace(prefix, "")
    return kernel[:150]


def summary(prof: Any, steps: int, top: int = 8) -> dict:
    """Per step: the GPU's time in kernels (ms), how many it ran, the time by kind, the `top` kernels, and the
    host operators with the most self CPU time (ms, calls)."""
    events = prof.key_averages()
    # a range the host marks (ProfilerStep#, Optimizer.step#...) is also listed on the device, over the kernels
    # it spans: left out, or they would count twice
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and not _annotation(e)]
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + e.self_device_time_total / steps / 1e3
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and not _annotation(e)]
    return {
        "kernel_ms": sum(e.self_device_time_total for e in kernels) / steps / 1e3,
        "kernels": sum(e.count for e in kernels) / steps,
        "by_kind": by_kind,
        "top": [(short(e.key), e.self_device_time_total / steps / 1e3, e.count / steps) for e in _most(kernels, top)],
        "host_top": [
            (e.key[:100], e.self_cpu_time_total / steps / 1e3, e.count / steps)
            for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:top]
        ],
    }


def _annotation(event: Any) -> bool:
    return bool(getattr(event, "is_user_annotation", False)) or event.key.startswith(("ProfilerStep", "Optimizer."))


def _most(kernels: list, n: int) -> list:
    return sorted(kernels, key=lambda e: -e.self_device_time_total)[:n]


def print_summary(s: dict, indent: str = "    ") -> None:
    kinds = sorted(s["by_kind"].items(), key=lambda kv: -kv[1])
    print(f"{indent}kernel time by kind: " + ", ".join(f"{k} {ms:.1f} ms" for k, ms in kinds), flush=True)
    for key, ms, count in s["top"]:
        print(f"{indent}{ms:8.2f} ms {count:6.0f}x  {key}", flush=True)
    if s.get("host_top"):
        print(f"{indent}host, self CPU time a step:", flush=True)
        for key, ms, count in s["host_top"]:
            print(f"{indent}{ms:8.2f} ms {count:6.0f}x  {key}", flush=True)
