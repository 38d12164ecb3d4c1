"""Worker processes for CPU-bound stages (synthesis, ingest conversion): how many, and how they start."""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_context() -> BaseContext:
    """``fork`` where the platform has it (workers inherit loaded modules: no re-import), else the default."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
