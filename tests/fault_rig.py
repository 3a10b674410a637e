"""The whole app (no HTTP server) with its registry and captured logs, for the fault matrices."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from codalab_scaler.service.context import Context
from codalab_scaler.simulator import CodaLabSimulator
from tests.fault_proxy import FaultProxy


@dataclass
class Rig:
    ctx: Context
    registry: CollectorRegistry
    proxy: FaultProxy
    sim: CodaLabSimulator
    logs: list[MutableMapping[str, Any]]

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"pool": "p", **labels}) or 0.0

    @property
    def launched(self) -> float:
        return self.sample("codalab_scaler_launches_total", outcome="launched")

    def errors(self, source: str) -> float:
        """Failed polls of ``source`` (``bundles`` or ``jobs``) counted so far."""
        return sum(
            self.sample("codalab_scaler_poll_errors_total", source=source, kind=kind)
            for kind in ("transient", "refused")
        )

    @property
    def bundle_errors(self) -> float:
        return self.errors("bundles")

    def events(self, name: str, **fields: Any) -> list[MutableMapping[str, Any]]:
        return [
            e
            for e in self.logs
            if e["event"] == name and all(e.get(k) == v for k, v in fields.items())
        ]

    def warned_once_each(self, upto: int) -> list[str]:
        """Warnings and errors logged before ``upto``, each as ``event[:source]``.

        The test asserts none repeats: one warning per event and failing source.
        """
        return [
            f"{e['event']}:{e['source']}" if "source" in e else e["event"]
            for e in self.logs[:upto]
            if e["log_level"] in {"warning", "error"}
        ]

    def launch_followed_recovery(self, since: int) -> bool:
        """The first launch after ``since`` came with each source's first good poll, not later.

        Every source that failed (bundles, and with the planner the workers view
        behind the same server) recovers once before the launch, never twice.
        """
        after = self.logs[since:]
        first = next(i for i, e in enumerate(after) if e["event"] == "scaler.launched")
        recovered = [e.get("source") for e in after[:first] if e["event"] == "poll.recovered"]
        return len(recovered) == len(set(recovered))
