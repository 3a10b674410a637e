"""What the simulator says and hears besides JSON:API: error answers and recorded requests.

The real server answers errors as plain text with ``Content-Type: text/html``
(``text_response``).  A handler that must stop early raises ``Answer`` with
the response to send; the server's middleware sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator received it (header names lower-cased)."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: str = ""

    @property
    def keywords(self) -> list[str]:
        return [value for key, value in self.query if key == "keywords"]


class Answer(Exception):
    """Raised by a handler to answer early with ``response``."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def text_response(status: int, message: str) -> web.Response:
    """An error answer as the real server writes it: plain text labelled ``text/html``."""
    return web.Response(status=status, text=message, content_type="text/html")
