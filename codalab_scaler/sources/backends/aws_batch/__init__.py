"""Workers as AWS Batch jobs (subcommand ``aws-batch``), through aiobotocore.

``spec`` builds every request as plain data (no I/O), ``errors`` turns
botocore's exceptions into the scaler's vocabulary and ``backend`` talks to
AWS Batch.  See ``backend`` for retries, naming and restart recovery.
"""

from codalab_scaler.sources.backends.aws_batch.backend import AwsBatchBackend

__all__ = ["AwsBatchBackend"]
