"""How many CPU threads torch computes with (``--threads``, ``$SLURM_CPUS_PER_TASK``)."""

from __future__ import annotations


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch CPU threads (None: leave torch's choice)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
