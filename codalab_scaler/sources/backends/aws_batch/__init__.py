"""Workers as AWS Batch jobs (subcommand ``aws-batch``), through aiobotocore.

``settings`` is the model (no SDK import), ``spec`` builds every request as
plain data (no I/O), ``errors`` turns botocore's exceptions into the
scaler's vocabulary and ``backend`` talks to AWS Batch and provides
``create_backend``.  This file imports none of them, so naming the package
never loads botocore.
"""
