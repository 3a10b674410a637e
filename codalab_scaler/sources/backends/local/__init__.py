"""The embedded default backend: ``cl-worker`` processes on this machine.

``settings`` holds the model (importing nothing heavy); ``backend`` runs
the processes and provides ``create_backend``.
"""
