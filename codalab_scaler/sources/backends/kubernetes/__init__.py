"""Workers as Kubernetes pods (subcommand ``kubernetes``), through kubernetes_asyncio.

``settings`` is the model (no SDK import), ``spec`` builds the pod and the
Secret as plain wire-format data and reads pods back (no I/O), ``errors``
turns the client's exceptions into the scaler's vocabulary, ``client``
opens the API client from a kubeconfig, in-cluster or the original's flags,
and ``backend`` talks to the API server and provides ``open_backend``.
This file imports none of them, so naming the package never loads the SDK.
"""
