"""Whether this machine has a CUDA GPU, asked without importing torch (the Snakefile's ``onstart``).

``device: cuda`` on a machine without one used to fail inside the first dump, after the training
jobs, in a page of tracebacks; the run now stops before any job. The test is the driver's device
files (``/dev/nvidia<N>``; ``/dev/kfd`` for ROCm, whose torch also says ``cuda``), narrowed by
``CUDA_VISIBLE_DEVICES`` when that hides every GPU.
"""

from __future__ import annotations

import glob
import os


def has_cuda() -> bool:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def device_problem(device: str) -> str | None:
    """The sentence that stops a local run of ``device`` here, or None."""
    if device != "cuda" or has_cuda():
        return None
    return (
        "device=cuda, but this machine has no CUDA GPU (no /dev/nvidia*, or CUDA_VISIBLE_DEVICES hides "
        "them); run with device=cpu or device=auto here, or on a GPU cluster (--profile profiles/slurm)"
    )
