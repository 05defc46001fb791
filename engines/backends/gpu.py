"""What GPU this process sees, for engine manifests and error messages. Needs torch only (not TensorRT):
a TensorRT engine is tied to the GPU model (compute capability) and the TensorRT version it was built with,
so a manifest records both."""
from __future__ import annotations

import shutil
import subprocess


def nvidia_driver_version(timeout_s: float = 5.0) -> str | None:
    """The NVIDIA display driver version (``"550.54.15"``) from ``nvidia-smi``, or None without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=timeout_s, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else None


def gpu_info(device: str | int = "cuda:0") -> dict | None:
    """``{"name", "compute_capability" ("9.0"), "memory_mib", "driver_version", "cuda_driver", "cuda_runtime",
    "device"}`` for a CUDA device, or None where torch is missing or sees no CUDA device.

    ``driver_version`` is the NVIDIA driver (from nvidia-smi, None without it); ``cuda_driver`` the CUDA version
    that driver supports (``"12.4"``); ``cuda_runtime`` the CUDA version torch was built with (``"12.4"``)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    index = device if isinstance(device, int) else torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    return {
        "device": f"cuda:{index}",
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_mib": int(props.total_memory // 2**20),
        "driver_version": nvidia_driver_version(),
        "cuda_driver": _cuda_driver_version(torch),
        "cuda_runtime": torch.version.cuda,
    }


def _cuda_driver_version(torch) -> str | None:
    # torch has no public call for it; the private one returns e.g. 12040 for CUDA 12.4.
    getter = getattr(torch._C, "_cuda_getDriverVersion", None)
    try:
        version = int(getter()) if getter else 0
    except Exception:  # a private API: never let it break a manifest
        return None
    return f"{version // 1000}.{version % 1000 // 10}" if version else None
