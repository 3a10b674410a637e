from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from codalab_scaler.service.logs import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def test_json_lines_with_event_names_and_redaction() -> None:
    out = io.StringIO()
    configure_logging(fmt="json", stream=out)
    structlog.get_logger().info("scaler.decided", pool="gpu", launch=1, password="hunter2")
    structlog.get_logger().debug("poll.jobs", pool="gpu")  # below the level
    logging.getLogger("aiohttp.server").error("library trouble")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["event"] == "scaler.decided"
    assert lines[0]["pool"] == "gpu"
    assert lines[0]["level"] == "info"
    assert lines[0]["password"] == "[redacted]"
    assert lines[1]["event"] == "library trouble"
    assert lines[1]["logger"] == "aiohttp.server"
    assert lines[1]["level"] == "error"
    assert len(lines) == 2
    assert "hunter2" not in out.getvalue()


def test_verbose_shows_debug_events() -> None:
    out = io.StringIO()
    configure_logging(fmt="json", verbose=True, stream=out)
    structlog.get_logger().debug("poll.jobs", pool="gpu")
    assert json.loads(out.getvalue())["event"] == "poll.jobs"


def test_console_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    configure_logging(stream=out)
    structlog.get_logger().info("service.started", pools=["a"])
    text = out.getvalue()
    assert "service.started" in text
    assert not text.startswith("{")
