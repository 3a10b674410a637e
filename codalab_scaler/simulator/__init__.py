"""An in-process CodaLab server and a stand-in ``cl-worker`` for tests and the demo."""

from codalab_scaler.simulator.codalab_sim import (
    CodaLabSimulator,
    RecordedRequest,
    SimBundle,
    SimWorker,
    run_bundle_stream,
)

__all__ = ["CodaLabSimulator", "RecordedRequest", "SimBundle", "SimWorker", "run_bundle_stream"]
