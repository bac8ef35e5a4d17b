"""What a measurement depends on: one line naming the machine, printed with every timing.

Benchmarks and ``dcls-zoo compare`` record it beside their tables, so that figures from an AMD
EPYC (AVX2) and an Intel Xeon (AVX-512) of the same machine kind are never mixed up.
"""

from __future__ import annotations

import os
import platform
import re

import torch

__all__ = ["machine_description"]


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from ``/proc/cpuinfo`` (Linux), else what
    :mod:`platform` knows and no flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            text = file.read()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    return (model.group(1).strip() if model else platform.machine()), set(flags.group(1).split() if flags else ())


def machine_description(device: torch.device | str = "cpu") -> str:
    """One line naming what the timings depend on: the CPU model, the vector ISA PyTorch's
    kernels dispatch to (and the AVX-512 / AMX extensions oneDNN can use), the core count, the
    oneDNN version, torch, and the GPU for ``cuda``.

    The same machine kind comes with AMD EPYC (AVX2) or Intel Xeon (AVX-512) CPUs, and oneDNN
    ranks convolution paths differently on the two, so every table is printed with this line.
    """
    model, flags = _cpu_model_and_flags()
    extensions = [name for name in ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if name in flags]
    isa = torch.backends.cpu.get_cpu_capability()
    onednn = re.search(r"MKL-DNN v([0-9.]+)", torch.__config__.show())
    parts = [
        f"CPU {model}",
        f"ISA {isa}" + (f" ({', '.join(extensions)})" if extensions else ""),
        f"{os.cpu_count()} logical cores",
        f"oneDNN {onednn.group(1) if onednn else 'unknown'}",
        f"torch {torch.__version__}",
    ]
    if torch.device(device).type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    return "; ".join(parts)
