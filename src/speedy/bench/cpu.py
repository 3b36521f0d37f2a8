"""The CPU a speed figure was measured on, with the vector instructions its ratios depend on (int8 dot products:
VNNI, AMX; wide vectors: AVX2, AVX-512). Every speed table names it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
         ("amx_int8", "AMX-INT8"), ("asimddp", "Arm dot product"))


def cpu_description() -> str:
    """``'AMD EPYC, 2 cores; AVX2, AVX-512, AVX-512 VNNI'`` (Linux reads /proc/cpuinfo; elsewhere the platform's
    processor name only)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model name", "cpu model") and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    shown = [label for flag, label in FLAGS if flag in flags]
    return f"{name}, {os.cpu_count()} cores; {', '.join(shown) if shown else 'no AVX2 or int8 dot-product flags seen'}"
