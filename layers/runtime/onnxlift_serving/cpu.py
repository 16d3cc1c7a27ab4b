"""What this CPU offers the integer kernels: the facts a parity figure depends on.

onnxruntime's MLAS picks its u8 x s8 matrix kernel from the CPU. With AVX-512 VNNI or AVX-VNNI
(vpdpbusd) and on arm64 (sdot/udot) the products are summed exactly in 32 bits; on x86 without
VNNI (AVX2, AVX-512F) vpmaddubsw adds each pair of products in 16 bits with saturation.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

__all__ = ["INTEGER_FLAGS", "cpu_facts", "u8s8_saturates"]

# The flags that choose onnxruntime's integer kernels, as /proc/cpuinfo names them.
INTEGER_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
_X86 = {"x86_64", "amd64", "i386", "i686"}


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        return platform.processor() or "unknown", set()
    model, flags = "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in {"model name", "cpu model"} and model == "unknown":
            model = value.strip()
        elif key in {"flags", "features"}:
            flags.update(value.split())
    return model, flags


def u8s8_saturates(machine: str, flags: set[str] | list[str]) -> bool:
    """True where onnxruntime's default u8 x s8 kernel adds product pairs in 16 bits."""
    flags = set(flags)
    return machine.lower() in _X86 and not flags & {"avx512_vnni", "avx_vnni"}


@functools.cache
def cpu_facts() -> dict[str, Any]:
    """This machine: architecture, CPU model, integer-kernel flags, and whether u8 x s8
    saturates here without onnxruntime's precision setting. Read once per process."""
    machine = platform.machine()
    model, flags = _cpuinfo()
    return {
        "machine": machine,
        "model": model,
        "flags": sorted(flags & set(INTEGER_FLAGS)),
        "u8s8_saturates": u8s8_saturates(machine, flags),
    }
