"""A loopback HTTP server serving recorded answers to the price and forecast sources (no internet in tests).

``RecordedServer`` listens on 127.0.0.1 at an ephemeral port; ``serve(path, body, status=…)`` sets the
answer of one path (the query is ignored, it is recorded), ``hang`` holds the answer until an event is
set, ``drop`` closes the connection without an answer. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(name: str) -> bytes:
    """The bytes of a recorded answer, e.g. ``fixture("prices/tibber_2026-05-01.json")``."""
    return (FIXTURES / name).read_bytes()


@dataclass
class Answer:
    """What the server sends for one path."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hang: threading.Event | None = None  # answer only once this is set
    drop: bool = False  # close the connection without an answer


@dataclass(frozen=True)
class Received:
    """One request the server got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class RecordedServer:
    """Serves recorded answers on 127.0.0.1 (ephemeral port); use as a context manager."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.requests: list[Received] = []
        self._released = threading.Event()  # set at close: no handler hangs past the test
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append(Received(self.command, parts.path,
                                                {k: v[0] for k, v in parse_qs(parts.query).items()},
                                                dict(self.headers.items()), body))
                answer = server.answers.get(parts.path)
                if answer is None:
                    answer = Answer(b'{"detail": "Not Found"}', 404)
                if answer.hang is not None:
                    while not answer.hang.wait(0.05) and not server._released.is_set():
                        pass
                if answer.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (its timeout)
                    self.wfile.write(answer.body)

            do_GET = _handle
            do_POST = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="recorded-server", daemon=True)

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:43211."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def serve(self, path: str, body: bytes | str | dict[str, Any] | list[Any] = b"", status: int = 200, *,
              content_type: str = "application/json", headers: dict[str, str] | None = None,
              hang: threading.Event | None = None, drop: bool = False) -> None:
        """Set the answer of ``path``."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.answers[path] = Answer(body, status, content_type, headers or {}, hang, drop)

    def count(self, path: str | None = None) -> int:
        """How many requests arrived (for ``path``)."""
        return sum(1 for r in self.requests if path is None or r.path == path)

    def __enter__(self) -> RecordedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def server() -> Iterator[RecordedServer]:
    """A recorded-answer server on 127.0.0.1 (import this fixture into the test module)."""
    with RecordedServer() as s:
        yield s


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """The HTTP session a source under test receives."""
    with requests.Session() as s:
        yield s
