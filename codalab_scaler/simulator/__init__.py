"""An in-process CodaLab server and a stand-in ``cl-worker`` for tests and the demo.

``codalab_sim`` is the server (its docstring states the contract it follows
and the simulator's own conventions); beside it, one part each: ``oauth``
(token endpoint and tokens), ``search`` (the keyword language of
``GET /rest/bundles``), ``documents`` (its JSON:API resources), ``workers``
(check-ins and assignment), ``faults`` (injected errors and delays),
``wire`` (plain-text errors, recorded requests), ``model`` (``SimBundle``,
``SimWorker``) and ``stream`` (the demo's synthetic workload).
"""

from codalab_scaler.simulator.codalab_sim import (
    CodaLabSimulator,
    RecordedRequest,
    SimBundle,
    SimWorker,
    run_bundle_stream,
)

__all__ = ["CodaLabSimulator", "RecordedRequest", "SimBundle", "SimWorker", "run_bundle_stream"]
