"""Workers as Azure Batch tasks (subcommand ``azure-batch``), through azure-batch's async client.

``settings`` is the model (no SDK import), ``spec`` builds every request as
plain data in the REST API's JSON shape (no I/O), ``errors`` turns
azure-core's exceptions into the scaler's vocabulary and ``backend`` talks
to the Batch service and provides ``create_backend``.  This file imports none
of them, so naming the package never loads the Azure SDK.
"""
