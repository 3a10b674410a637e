"""The ``slurm-batch`` backend: workers as Slurm batch jobs (see ``backend``)."""

from __future__ import annotations

from codalab_scaler.sources.backends.slurm.backend import SlurmBatchBackend

__all__ = ["SlurmBatchBackend"]
