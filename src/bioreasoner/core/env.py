"""The software and hardware a stage ran on, recorded in every model folder's lineage.

`environment()` returns library versions and hardware only: what is the same for two runs on
the same machine. Nothing that changes from run to run (timestamps, PIDs, host names, temp
paths) goes in, because `lineage.json` lives inside model folders that DVC hashes: the same
machine must write the same bytes. torch is imported inside the function, so importing this
module stays as light as the rest of `bioreasoner.core`.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

# Recorded always (None when not installed), in this order.
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "dvc")
# Recorded only when installed: the CUDA extras (`.[cuda]`).
OPTIONAL_LIBRARIES = ("bitsandbytes", "vllm")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo on Linux, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def libraries() -> dict[str, str | None]:
    """Python and the versions of the libraries that shape a run's numbers."""
    import torch

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        versions[name] = str(torch.__version__) if name == "torch" else _version(name)
    for name in OPTIONAL_LIBRARIES:
        if (v := _version(name)) is not None:
            versions[name] = v
    return versions


def hardware() -> dict[str, Any]:
    """The machine: OS and architecture, CPU, torch's thread count, and the CUDA devices if any."""
    import torch

    hw: dict[str, Any] = {
        "os": platform.system(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": None,
    }
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        hw["cuda"] = {
            "version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "device_count": n,
            "devices": [torch.cuda.get_device_name(i) for i in range(n)],
        }
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        hw["mps"] = True
    return hw


def environment() -> dict[str, Any]:
    """{"libraries": {...versions}, "hardware": {...}}: deterministic on one machine."""
    return {"libraries": libraries(), "hardware": hardware()}
