"""HTTP for the price and forecast sources: one request, every failure turned into the source's own error.

The sources call ``request`` with their ``requests.Session`` and an error class (``PriceError`` or
``ForecastError``); a timeout, a refused connection, an HTTP error status or a body that is not what the
source expects all come back as that error with a message that names the source, never as a traceback.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_TIMEOUT_S = 20.0  # the price servers answer within a few seconds; this thread may wait, nothing else does
MAX_BODY_BYTES = 8_000_000  # two days of 15-minute prices are ~20 kB; anything this large is not a price answer


@dataclass(frozen=True)
class HttpAnswer:
    """A received answer with a 2xx status."""

    status: int
    body: bytes
    headers: Mapping[str, str]


def _connection_problem(exc: requests.ConnectionError) -> str:
    """A short reason instead of urllib3's nested exception text."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.append(current)
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, ConnectionResetError):
            return "connection reset by the server"
        if isinstance(current, socket.gaierror):
            return "host name not found (no internet or DNS?)"
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(x for x in linked if isinstance(x, BaseException))
    return "cannot connect (no internet connection?)"


def request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    error: type[Exception],
    what: str,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    ok_statuses: tuple[int, ...] = (),
) -> HttpAnswer:
    """Send one request; return the answer or raise ``error`` naming ``what``.

    A status outside 2xx raises, unless it is listed in ``ok_statuses`` (the caller reads its body).
    """
    try:
        response = session.request(method, url, params=params, headers=headers, json=json_body,
                                   timeout=(min(5.0, timeout_s), timeout_s))
        body = response.content
    except requests.Timeout:
        raise error(f"{what}: no answer within {timeout_s:g} s") from None
    except requests.ConnectionError as exc:
        raise error(f"{what}: {_connection_problem(exc)}") from None
    except requests.RequestException as exc:
        raise error(f"{what}: request failed ({type(exc).__name__})") from None
    if len(body) > MAX_BODY_BYTES:
        raise error(f"{what}: answer too large ({len(body)} bytes)")
    if not 200 <= response.status_code < 300 and response.status_code not in ok_statuses:
        reason = (response.reason or "").strip()
        snippet = body[:120].decode("utf-8", "replace").strip().replace("\n", " ")
        detail = f": {snippet}" if snippet else ""
        raise error(f"{what}: HTTP {response.status_code} {reason}{detail}".replace("  ", " "))
    return HttpAnswer(response.status_code, body, response.headers)


def _reject_constant(name: str) -> float:
    """JSON has no NaN/Infinity; Python's parser accepts them unless told otherwise."""
    raise ValueError(f"contains {name}")


def parse_json(body: bytes, *, error: type[Exception], what: str) -> Any:
    """The JSON value of ``body``; anything else (HTML error page, truncated body, NaN) raises ``error``."""
    try:
        return json.loads(body.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        snippet = body[:60].decode("utf-8", "replace").strip().replace("\n", " ")
        raise error(f"{what}: answer is not JSON ({exc}): {snippet!r}") from None


def json_object(body: bytes, *, error: type[Exception], what: str) -> dict[str, Any]:
    """The JSON object of ``body``; raise ``error`` if the body is not a JSON object."""
    data = parse_json(body, error=error, what=what)
    if not isinstance(data, dict):
        raise error(f"{what}: answer is not a JSON object but {type(data).__name__}")
    return data
