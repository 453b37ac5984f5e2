"""What machine the numbers were measured on: CPU model, cores and the ISA flags that matter for int8."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# flags that decide which int8 kernels onnxruntime can use
INT8_FLAGS = ("sse4_1", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def cpu_info() -> dict[str, object]:
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    flags = {"dotprod" if f == "asimddp" else f for f in flags}
    wanted = [f for f in (*INT8_FLAGS, "dotprod") if f in flags and f != "asimddp"]
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(), "isa": wanted}
