"""What the bench commands share: their usage error, the default job, the ``--device`` choice and the device's
name in the JSON."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    """A bad command line; the message names the flag or key."""


def default_config() -> Path:
    """jobs/demo.yaml of the working directory, else of this checkout (the job ``curves`` and ``scaling`` train)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "jobs" / "demo.yaml"
        if candidate.is_file():
            return candidate
    return Path("jobs") / "demo.yaml"


def choose_device(name: str) -> Any:
    """``--device auto|cpu|cuda`` -> a ``torch.device`` (auto: CUDA when torch sees one)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def device_name(device: Any) -> str:
    """The GPU's name, else the CPU's model name."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
