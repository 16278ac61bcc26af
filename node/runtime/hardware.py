"""The hardware profile an operator registers: detected and measured here, overridable by flags.

With a CUDA GPU (torch present and `torch.cuda.is_available()`): the device name and memory from
its properties, peak dense matmul throughput (bf16) and device-memory copy bandwidth measured with
short timed kernels. Without one: the CPU model and the machine's memory, with fp32 matmul
throughput and memory copy bandwidth measured with numpy. Network bandwidth is the fastest
link speed Linux reports in /sys/class/net (0 when none reports one: pass --net-bw-mbps). Every
figure is measured or read, never assumed; a flag replaces any of them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from contracts.node_registry import Hardware

GPU_NAME_MAX, REGION_MAX = 64, 32  # the registry's String[64] / String[32]
MEASURE_S = 0.15  # per timed figure: long enough for a stable rate, short for a CLI


@dataclass(frozen=True)
class Profile:
    """A hardware profile in human units (what the CLI prints and the flags set)."""

    gpu: str
    vram_mib: int
    tflops: float
    mem_bw_gbps: float
    net_bw_mbps: int
    region: str

    def to_chain(self) -> Hardware:
        """The registry's integer form (TFLOPS x 1000, GB/s and Mbit/s rounded). A measured rate
        never rounds down to 0, which the coordinator refuses as "no bandwidth": a CPU box under
        heavy load measured 0.4 GB/s once, and its worker was never scheduled."""
        def whole(x: float) -> int:
            return max(1, round(x)) if x > 0 else 0

        return Hardware(self.gpu, self.vram_mib, whole(self.tflops * 1000),
                        whole(self.mem_bw_gbps), self.net_bw_mbps, self.region)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _rate(step: Callable[[], None], sync: Callable[[], None], units_per_step: float) -> float:
    """Units per second of `step`, after one warm-up call, over about MEASURE_S seconds."""
    step()
    sync()
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if n % 4 == 0:
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= MEASURE_S:
                return units_per_step * n / elapsed


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_mib() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return 0


def link_speed_mbps(net_dir: Path = Path("/sys/class/net")) -> int:
    """Fastest link speed reported by a non-loopback interface, 0 if none reports one."""
    best = 0
    try:
        interfaces = list(net_dir.iterdir())
    except OSError:
        return 0
    for iface in interfaces:
        if iface.name == "lo":
            continue
        try:
            best = max(best, int((iface / "speed").read_text().strip()))
        except (OSError, ValueError):
            continue
    return best


def _cuda_profile(torch: Any) -> tuple[str, int, float, float]:
    dev = torch.device("cuda:0")
    props = torch.cuda.get_device_properties(dev)
    n = 4096
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    tflops = _rate(lambda: torch.mm(a, b), torch.cuda.synchronize, 2 * n**3) / 1e12
    x = torch.empty(2**28, device=dev, dtype=torch.uint8)  # 256 MiB: well past any cache
    y = torch.empty_like(x)
    gbps = _rate(lambda: y.copy_(x), torch.cuda.synchronize, 2 * x.numel()) / 1e9
    return props.name, props.total_memory // 2**20, tflops, gbps


def _cpu_profile() -> tuple[str, int, float, float]:
    import numpy as np

    n = 512
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    tflops = _rate(lambda: a @ b, lambda: None, 2 * n**3) / 1e12
    x = np.ones(2**25, dtype=np.uint8)  # 32 MiB: past the last-level cache of most CPUs
    y = np.ones_like(x)
    gbps = _rate(lambda: np.copyto(y, x), lambda: None, 2 * x.nbytes) / 1e9
    name = f"CPU {_cpu_name()} x{os.cpu_count() or 1}"
    return name, _memory_mib(), tflops, gbps


def detect(region: str = "unknown") -> Profile:
    """Detect and measure this machine (about half a second)."""
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch as _torch

        torch = _torch if _torch.cuda.is_available() else None
    name, mem_mib, tflops, gbps = _cuda_profile(torch) if torch is not None else _cpu_profile()
    return Profile(name[:GPU_NAME_MAX], int(mem_mib), round(tflops, 6), round(gbps, 3),
                   link_speed_mbps(), region)


def resolve(overrides: dict[str, Any]) -> Profile:
    """The detected profile with every non-None override applied; detection is skipped when
    every measured field is overridden."""
    given = {k: v for k, v in overrides.items() if v is not None}
    measured = {"gpu", "vram_mib", "tflops", "mem_bw_gbps"}
    if measured <= given.keys():
        base = Profile("", 0, 0.0, 0.0, link_speed_mbps(), "unknown")
    else:
        base = detect()
    profile = replace(base, **given)
    check(profile)
    return profile


def check(p: Profile) -> None:
    """Raise ValueError, quoting the value, for a profile the registry or scheduler cannot use."""
    if not p.gpu or len(p.gpu.encode()) > GPU_NAME_MAX:
        raise ValueError(f"gpu name {p.gpu!r} must be 1-{GPU_NAME_MAX} bytes")
    if not p.region or len(p.region.encode()) > REGION_MAX:
        raise ValueError(f"region {p.region!r} must be 1-{REGION_MAX} bytes")
    for field in ("vram_mib", "tflops", "mem_bw_gbps"):
        value = getattr(p, field)
        if not value > 0:
            raise ValueError(f"{field} ({value}) must be greater than zero")
    if p.net_bw_mbps < 0:
        raise ValueError(f"net_bw_mbps ({p.net_bw_mbps}) must not be negative")
