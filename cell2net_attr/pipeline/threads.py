"""How many CPU threads torch computes with, and how its idle threads wait.

Cluster nodes and laptops are shared: other processes compete for the cores. torch's CPU pool (OpenMP)
then hurts in two ways. Idle threads spin for the next parallel region instead of sleeping, stealing the
core from whoever holds it (the other process, or a thread of the same pool); and a pool wider than the
cores this process may use (a SLURM allocation, ``taskset``) queues its own threads behind each other.
So the command line makes idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``, unless the environment says
otherwise), and the pool is as wide as the CPUs this process may run on, never wider.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity: a SLURM allocation, ``taskset``), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def prefer_passive_waiting(env: MutableMapping[str, str] | None = None) -> None:
    """Idle OpenMP threads sleep instead of spinning, unless ``OMP_WAIT_POLICY`` is set already. Takes effect
    only before torch is first imported (the OpenMP runtime reads it once): the command line calls it first."""
    (os.environ if env is None else env).setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(threads: int | None = None) -> int:
    """Compute with ``threads`` torch CPU threads (default: :func:`cpus_available`, and at most that many:
    threads beyond the allowed CPUs only wait for each other). Returns the number set."""
    import torch

    n = cpus_available() if threads is None else max(1, min(int(threads), cpus_available()))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
