"""The platform record that goes with every benchmark report.

A latency figure means nothing without the machine, the software versions and
the settings it was measured with (ROS 2 performance_test records the same).
"""

from __future__ import annotations

import os
import platform as _platform
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import msgpack
import numpy
import onnxruntime
import zmq


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()


def governor() -> str | None:
    """The CPU frequency governor of cpu0, when the kernel exposes it."""
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    try:
        return path.read_text().strip()
    except OSError:
        return None


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "numpy": numpy.__version__,
           "onnxruntime": onnxruntime.__version__, "pyzmq": zmq.__version__,
           "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version))}
    try:
        out["torch"] = version("torch")
    except Exception:
        out["torch"] = "not installed"
    return out


def platform_record(settings: dict[str, Any]) -> dict[str, Any]:
    """Machine, kernel, versions and the run's settings."""
    uname = _platform.uname()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "governor": governor(),
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "versions": versions(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_CORETYPE")
                if k in os.environ},
        "settings": settings,
    }
