"""The ``slurm-batch`` backend: workers as Slurm batch jobs.

``settings`` is the model (no subprocess import); ``backend`` submits and
lists jobs and provides ``create_backend``.
"""
