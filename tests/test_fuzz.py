"""Fuzzing the web server: random paths, methods, bodies and headers never give a 5xx or a traceback.

The app is the real one (``web_server.create_app``) in front of the real control thread
(``ControlLoop`` on ``simulator.Simulation``), so setup commands that pass validation really run
on the control thread. Two apps share that system: one without and one with ``web.password``.
Each example is a short sequence of requests, a quarter of them in setup mode (scan, set-id and
add-to-config run for real there); setup mode carries over between examples.

A few raw requests also go through the real HTTP server (waitress via ``main.start_web``): things
the Flask test client cannot even build (bytes that are not UTF-8 in the path, broken request lines).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import pytest
from flask import Flask
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import main
from config_loader import Config, WebConfig, parse_config
from control.commands import ExitSetup
from control.control_loop import ControlLoop
from control.status_store import CommandQueue, StatusStore
from simulator.world import Simulation, UnitSpec
from tests.helpers import free_port, wait_until
from web_server import MAX_BODY_BYTES, create_app

PASSWORD = "fuzz-geheim"
# Units 1..8 answer (probes of silent IDs take a second each); 9 is free for one real re-addressing.
UNIT_IDS = range(1, 9)


@dataclass
class System:
    sim: Simulation
    store: StatusStore
    commands: CommandQueue
    loop: ControlLoop
    apps: dict[str, Flask]  # "open" (no password) and "locked" (web.password set)


def system_config(sim: Simulation) -> Config:
    return parse_config({
        "energy_meter": {"type": "shelly"},
        "shelly": {"ip": f"127.0.0.1:{sim.shelly_port}", "timeout_seconds": 1},
        "battery": {"ip": "127.0.0.1", "port": sim.modbus_port, "akku_ids": [1, 2], "timeout_seconds": 0.5},
        "control": {"poll_interval_seconds": 0.5},
        "web": {"host": "127.0.0.1", "port": 8080},
    })


@pytest.fixture(scope="module")
def system() -> Iterator[System]:
    with Simulation(units=[UnitSpec(i, soc_pct=50.0 + i) for i in UNIT_IDS]) as sim:
        sim.set_load_w(800.0)
        cfg = system_config(sim)
        store, commands = StatusStore(), CommandQueue()
        # No config_path: "add to config" changes the running config only (as in --demo).
        loop = ControlLoop(cfg, main.build_meter(cfg), main.build_bus(cfg), store, commands)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,), name="fuzz-control", daemon=True)
        thread.start()
        apps = {
            "open": create_app(store, commands, WebConfig(host="127.0.0.1", port=8080)),
            # A clock an hour further on every read: a wrong password never blocks the next request, so
            # the examples with the right one still reach the commands (blocking: tests/test_security.py).
            "locked": create_app(store, commands, WebConfig(host="127.0.0.1", port=8080, password=PASSWORD),
                                 clock=itertools.count(0.0, 3600.0).__next__),
        }
        try:
            wait_until(lambda: store.latest().control_state == "active", 20, "control active")
            yield System(sim, store, commands, loop, apps)
        finally:
            stop.set()
            commands.wakeup.set()
            thread.join(timeout=20)
        assert not thread.is_alive(), "control thread did not stop"
        for u in sim.units:  # set-id may have moved a unit; every battery under control ends stopped
            if u.unit_id in loop.batteries:
                assert (u.force_mode, u.charge_power_w, u.discharge_power_w) == (0, 0, 0), u.unit_id


# ---------------------------------------------------------------------------- strategies
KNOWN_PATHS = [
    "/", "/setup", "/login", "/logout", "/api/status", "/api/history", "/api/setup/enter", "/api/setup/exit",
    "/api/setup/scan", "/api/setup/set-id", "/api/setup/add-to-config", "/static/style.css", "/static/common.js",
    "/api/", "/api", "/static/", "/api/setup/", "/api/status/", "/favicon.ico",
]
ODD_PATHS = [
    "/static/../main.py", "/static/..%2fmain.py", "/static/%2e%2e/config.json", "/static/....//main.py",
    "/static/../../etc/passwd", "/api/../main.py", "//api/status", "/api//status", "/api/status%00",
    "/api/setup/scan?first_id=1", "/%ff%fe", "/api/%C3%BC", "/static/vendor/../../simulator.py",
    "/static/" + "a" * 3000, "/api/" + "x/" * 1500, "/login?next=//evil.example", "/login?next=%2F%5Cevil",
    "/api/history?since=nan", "/api/history?since=inf", "/api/history?since=-1e309", "/api/history?since=",
    "/api/history?since=1&since=x", "/setup?lang=🙂", "/ü/ß/你好", "/api/status?" + "a=b&" * 500,
]
SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="/?#"), max_size=20
)
PREFIXES = ["/", "/api/", "/api/setup/", "/static/", "/static/vendor/", "/login/"]


@st.composite
def paths(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind <= 3:
        return draw(st.sampled_from(KNOWN_PATHS))
    if kind <= 5:
        return draw(st.sampled_from(ODD_PATHS))
    prefix = draw(st.sampled_from(PREFIXES))
    segments = draw(st.lists(SEGMENT, max_size=4))
    query = draw(st.one_of(st.just(""), st.text(max_size=30).map(lambda q: "?" + q.replace("#", ""))))
    return prefix + "/".join(segments) + query


def json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    json_containers,
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(["first_id", "last_id", "new_id", "id", "password", "extra", ""])
FIELD_VALUES = st.one_of(
    st.integers(-5, 300), st.just(2**64), st.booleans(), st.none(), st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(0, 3), max_size=2),
)


def json_bytes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda v: json.dumps(v).encode())


# Mostly valid bodies for the setup API, with cheap scan ranges (units 1..8 answer).
SCAN_BODIES = json_bytes(st.integers(1, 6).flatmap(
    lambda first: st.fixed_dictionaries({"first_id": st.just(first), "last_id": st.integers(first, first + 2)})
))
SET_ID_BODIES = json_bytes(st.fixed_dictionaries({"new_id": st.integers(2, 9)}))
ADD_BODIES = json_bytes(st.fixed_dictionaries({"id": st.integers(1, 9)}))
# Not empty: {} would scan the default range 1..10 (two silent IDs, two seconds).
ODD_SETUP_BODIES = json_bytes(st.dictionaries(FIELD_NAMES, FIELD_VALUES, min_size=1, max_size=3))


def setup_bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(SCAN_BODIES, SET_ID_BODIES, ADD_BODIES, ODD_SETUP_BODIES)


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    """application/x-www-form-urlencoded bodies for /login, with unicode and percent-escapes."""
    fields = draw(st.dictionaries(
        st.sampled_from(["csrf_token", "password", "next", "x"]),
        st.one_of(st.just(PASSWORD), st.text(max_size=20)),
        max_size=3,
    ))
    raw = "&".join(f"{quote(k)}={quote(v)}" for k, v in fields.items())
    if draw(st.booleans()):
        raw += draw(st.sampled_from(["&%ZZ=1", "&a=%ff", "&&&", "=", "&csrf_token=%C3%BC"]))
    return raw.encode()


BODIES = st.one_of(
    st.none(),
    st.just(b""),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    setup_bodies(),
    form_bodies(),
    st.binary(max_size=200),
    st.sampled_from([b"{", b"{}}", b"\xff\xfe{\x00}", b'{"first_id": 1e999}', b"NaN", b'{"new_id": NaN}',
                     b'{"new_id": 3, "new_id": 4}', b"\xef\xbb\xbf{}", b'"\\ud800"', b"[" * 5000 + b"]" * 5000]),
    st.integers(1, 3000).map(lambda n: b'{"first_id": 1, "pad": "' + b"x" * (MAX_BODY_BYTES + n) + b'"}'),
)

LATIN1 = st.characters(codec="latin-1", exclude_characters="\r\n\x00")
HEADER_TEXT = st.text(alphabet=LATIN1, max_size=40)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


HEADERS = st.fixed_dictionaries({}, optional={
    "Content-Type": st.one_of(
        st.sampled_from([
            "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
            "application/json; charset=utf-16", "application/json; charset=bogus", "APPLICATION/JSON",
            "application/vnd.api+json", "application/json-patch+json", "text/plain", "text/html",
            "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=xyz",
            "application/octet-stream", ";", "",
        ]),
        HEADER_TEXT,
    ),
    "Origin": st.one_of(st.sampled_from(["http://localhost", "http://evil.example", "null", "http://[::1",
                                         "http://localhost:8080"]), HEADER_TEXT),
    "Referer": st.one_of(st.sampled_from(["http://localhost/setup", "javascript:alert(1)", "http://%zz"]),
                         HEADER_TEXT),
    "Authorization": st.one_of(
        st.sampled_from([basic("admin", PASSWORD), basic("", PASSWORD), basic("x", "wrong"), "Basic", "Basic ",
                         "Basic ====", "Basic w6TDtsO8", "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
                         "Bearer abc", "basic " + base64.b64encode(f":{PASSWORD}".encode()).decode()]),
        HEADER_TEXT.map(lambda t: "Basic " + t),
        HEADER_TEXT,
    ),
    "Accept-Language": st.one_of(st.sampled_from(["de", "en-US,en;q=0.9", "*", "xx;q=abc", ";q=", "de;q=2",
                                                  "en;q=-1", "," * 50]), HEADER_TEXT),
    "Accept": st.sampled_from(["*/*", "application/json", "text/html", "garbage/;;;"]),
    "Cookie": st.one_of(st.sampled_from(["session=abc", "session=", "session=" + "x" * 4000]), HEADER_TEXT),
    "X-Requested-With": HEADER_TEXT,
})

METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


@dataclass
class FuzzRequest:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


ROUTES = {  # path -> (method, body strategy, content type) a well-meaning client would use
    "/api/setup/enter": ("POST", st.just(b"{}"), "application/json"),
    "/api/setup/exit": ("POST", st.just(b""), "application/json"),
    "/api/setup/scan": ("POST", st.one_of(SCAN_BODIES, ODD_SETUP_BODIES), "application/json"),
    "/api/setup/set-id": ("POST", st.one_of(SET_ID_BODIES, ODD_SETUP_BODIES), "application/json"),
    "/api/setup/add-to-config": ("POST", st.one_of(ADD_BODIES, ODD_SETUP_BODIES), "application/json"),
    "/login": ("POST", form_bodies(), "application/x-www-form-urlencoded"),
    "/logout": ("POST", st.just(b""), "application/json"),
    "/api/history": ("GET", st.none(), "application/json"),
}


@st.composite
def plausible_requests(draw: st.DrawFn) -> FuzzRequest:
    """A request to a real route that is almost right: valid shapes with some fields off."""
    path = draw(st.sampled_from(sorted(ROUTES)))
    method, bodies, content_type = ROUTES[path]
    headers = draw(HEADERS)
    if draw(st.integers(0, 3)):
        headers["Content-Type"] = content_type
    if draw(st.booleans()):
        headers["Authorization"] = basic("admin", PASSWORD)
    if path == "/api/history":
        path += draw(st.sampled_from(["", "?since=", "?since=0", "?since=1e308", "?since=%C3%BC", "?since=1_0"]))
    return FuzzRequest(method, path, draw(bodies), headers)


REQUESTS = st.one_of(st.builds(FuzzRequest, METHODS, paths(), BODIES, HEADERS), plausible_requests())


# ---------------------------------------------------------------------------- checks
def wsgi_target(target: str) -> dict[str, str]:
    path, _, query = target.partition("?")
    return {
        "PATH_INFO": unquote_to_bytes(path.encode("utf-8")).decode("latin-1"),
        "QUERY_STRING": quote(query, safe="=&;%+/?:@!$'()*,"),
        "REQUEST_URI": quote(target, safe="=&;%+/?:@!$'()*,"),
    }


def check_response(req: FuzzRequest, status: int, content_type: str, body: bytes) -> None:
    where = f"{req.method} {req.path[:120]!r} {req.headers} body={(req.body or b'')[:120]!r}"
    assert status < 500, f"{status} for {where}: {body[:300]!r}"
    assert b"Traceback" not in body and b'File "' not in body, f"stack trace for {where}"
    if not unquote_to_bytes(req.path.partition("?")[0]).startswith(b"/api/") or req.method == "HEAD":
        return
    if req.method == "OPTIONS" and status < 400 and not body:
        return  # Flask's automatic OPTIONS answer: just the Allow header
    if 300 <= status < 400:
        return  # e.g. "/api//status" is redirected to "/api/status"
    assert content_type.startswith("application/json"), f"{content_type} for {where}"
    doc = json.loads(body)
    if status >= 400:
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], where


def leave_setup(system: System) -> None:
    if system.loop.setup_mode:
        system.commands.submit(ExitSetup())


# FUZZ_EXAMPLES=5000 for a deeper run by hand; the default keeps the file quick.
@pytest.mark.slow
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(app_name=st.sampled_from(["open", "locked"]), enter_setup=st.integers(0, 3),
       requests_=st.lists(REQUESTS, min_size=1, max_size=3))
def test_random_requests_never_get_a_5xx_or_a_stack_trace(
    system: System, app_name: str, enter_setup: int, requests_: list[FuzzRequest]
) -> None:
    """Setup mode carries over between examples (entering and leaving costs control cycles)."""
    client = system.apps[app_name].test_client()
    if enter_setup == 0:  # so that scan, set-id and add-to-config really run on the control thread
        requests_ = [FuzzRequest("POST", "/api/setup/enter", b"{}", {"Content-Type": "application/json",
                                                                  "Authorization": basic("admin", PASSWORD)}),
                     *requests_]
    for req in requests_:
        # The target goes in as a server would hand it over (waitress: percent-decoded PATH_INFO, raw
        # QUERY_STRING), so "//x" stays a path and bytes that are not UTF-8 reach the app.
        with client.open("/", method=req.method, data=req.body, headers=req.headers,
                         environ_overrides=wsgi_target(req.path)) as resp:
            check_response(req, resp.status_code, resp.headers.get("Content-Type", ""), resp.get_data())
        if req.path in ROUTES and resp.status_code == 200:
                event(f"ran {req.method} {req.path}")  # --hypothesis-show-statistics shows what really ran


@pytest.mark.slow
def test_the_control_thread_survived_the_fuzzing(system: System) -> None:
    """After all that, the control thread still answers commands and regulates."""
    leave_setup(system)
    assert system.commands.submit(ExitSetup()) == {"setup_mode": False}
    wait_until(lambda: system.store.latest().control_state == "active", 20, "control active after fuzzing")
    assert system.store.latest().meter_ok


# ---------------------------------------------------------------------------- raw HTTP through waitress
RAW_REQUESTS = [
    b"GET /api/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/..%2f..%2fmain.py HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/status%ZZ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/history?since=%ff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/setup/scan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n"
    b"\xff\xfe\xfd{}",
    b"POST /api/setup/scan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n",
    b"POST /api/setup/scan HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /api/setup/enter HTTP/1.1\r\nHost: \xff\xfe\r\nOrigin: http://\xff\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"GET / HTTP/1.1\r\nHost: x\r\nAccept-Language: \xff\xfe;q=\xff\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"b" * 70000 + b"\r\n\r\n",
]


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close early on an oversized request; its answer is still readable
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
@pytest.mark.parametrize("password", [None, PASSWORD])
def test_raw_garbage_through_the_real_server_gets_no_5xx(system: System, password: str | None) -> None:
    app = create_app(system.store, system.commands, WebConfig(host="127.0.0.1", port=8080, password=password))
    server, thread = main.start_web(app, "127.0.0.1", free_port())
    port = server.effective_port
    try:
        for request in RAW_REQUESTS:
            answer = raw_exchange(port, request)
            if not answer:
                continue  # closing the connection without an answer is fine for garbage
            status_line = answer.split(b"\r\n", 1)[0]
            parts = status_line.split(b" ")
            assert len(parts) >= 2 and parts[0].startswith(b"HTTP/"), (request[:80], answer[:200])
            assert int(parts[1]) < 500, (request[:80], answer[:300])
            assert b"Traceback" not in answer and b'File "' not in answer, request[:80]
    finally:
        main.stop_web(server, thread)
        leave_setup(system)


# ---------------------------------------------------------------------------- bugs the fuzzing found
@pytest.mark.parametrize("token", ["ü", "\u20ac" * 30, "abc\u00e9"])
def test_login_with_a_non_ascii_csrf_token_is_403_not_500(token: str) -> None:
    """hmac.compare_digest raises TypeError for non-ASCII str: it was a 500 with a logged traceback."""
    app = create_app(StatusStore(), CommandQueue(), WebConfig(host="127.0.0.1", port=8080, password=PASSWORD))
    client = app.test_client()
    client.get("/login")  # the session now holds a real token
    resp = client.post("/login", data={"csrf_token": token, "password": PASSWORD})
    assert resp.status_code == 403
    assert "CSRF" in resp.get_json()["error"]
