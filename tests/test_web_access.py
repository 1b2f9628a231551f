"""Access to the web server (interfaces.md "Access: locked by default"): loopback-only changes without a
password, the host allowlist against DNS rebinding, CSRF against the allowed origins, server-side sessions,
trusted proxies for the login throttle, deeply nested JSON, the password hash, /onboarding, --set-password."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.security import check_password_hash

from config_loader import WebConfig
from control import i18n
from control.status_store import CommandQueue, StatusStore
from tests.helpers import FakeClock
from web import access as web_access
from web_server import create_app

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "geheim-12345"
LAN = {"REMOTE_ADDR": "192.168.1.23"}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
# Every POST route with a body that the route itself refuses (400): reaching the 400 means the guard let it pass,
# and no command is queued (there is no control thread behind these apps).
POSTS = [
    ("/api/mode", {"mode": "nonsense"}),
    ("/api/setup/enter", {"x": 1}),
    ("/api/setup/exit", {"x": 1}),
    ("/api/setup/scan", {"first_id": 0}),
    ("/api/setup/set-id", {"new_id": 1}),
    ("/api/setup/add-to-config", {"id": 0}),
]
JSON_ROUTES = [path for path, _ in POSTS]


def make_app(clock: FakeClock | None = None, save_password: Any = None, **web: Any) -> Flask:
    values: dict[str, Any] = {"host": "0.0.0.0", "port": 8080, "password": None, "language": "en"}
    values.update(web)
    return create_app(StatusStore(), CommandQueue(), WebConfig(**values), clock=clock or FakeClock(),
                      save_password=save_password)


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


# ---------------------------------------------------------------------------- locked by default
@pytest.mark.parametrize(("path", "body"), POSTS)
def test_without_a_password_a_lan_client_cannot_change_anything(path: str, body: dict[str, Any]) -> None:
    client = make_app().test_client()
    resp = client.post(path, json=body, environ_base=LAN)
    assert resp.status_code == 403
    error = resp.get_json()["error"]
    assert "web.password" in error and "--set-password" in error
    # The same request from this machine passes the guard (and is refused by the route for its body).
    assert client.post(path, json=body).status_code == 400
    assert client.post(path, json=body, environ_base={"REMOTE_ADDR": "::1"}).status_code == 400


def test_without_a_password_login_logout_and_onboarding_posts_from_the_lan_are_403() -> None:
    client = make_app().test_client()
    for path in ("/logout", "/login", "/onboarding"):
        assert client.post(path, data={}, environ_base=LAN).status_code == 403


def test_without_a_password_reading_stays_open_but_diagnostics_only_on_loopback() -> None:
    client = make_app().test_client()
    for path in ("/", "/setup", "/api/status", "/api/mode", "/metrics"):
        assert client.get(path, environ_base=LAN).status_code == 200, path
    resp = client.get("/api/diagnostics", environ_base=LAN)
    assert resp.status_code == 403 and "web.password" in resp.get_json()["error"]
    assert client.get("/api/diagnostics").status_code == 404  # loopback passes (this app has no bundle)


def test_without_a_password_and_without_read_only_the_lan_sees_nothing_but_onboarding() -> None:
    client = make_app(read_only_without_login=False).test_client()
    assert client.get("/api/status", environ_base=LAN).status_code == 403
    resp = client.get("/", environ_base=LAN)
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/onboarding")
    assert client.get("/onboarding", environ_base=LAN).status_code == 200
    assert client.get("/api/status").status_code == 200  # this machine itself


def test_a_proxy_on_this_machine_does_not_make_its_clients_local() -> None:
    client = make_app().test_client()
    for header in ({"X-Forwarded-For": "192.168.1.50"}, {"Forwarded": "for=192.168.1.50"},
                   {"X-Real-IP": "192.168.1.50"}):
        assert client.post("/api/mode", json={"mode": "x"}, headers=header).status_code == 403


def test_with_a_password_a_lan_client_with_it_may_change_things() -> None:
    client = make_app(password=PASSWORD).test_client()
    assert client.post("/api/mode", json={"mode": "x"}, environ_base=LAN).status_code == 401
    assert client.post("/api/mode", json={"mode": "x"}, headers=basic(PASSWORD), environ_base=LAN).status_code == 400


# ---------------------------------------------------------------------------- the password hash
def test_web_password_may_be_the_stored_hash() -> None:
    stored = web_access.hash_password(PASSWORD)
    assert stored != PASSWORD and web_access.is_password_hash(stored)
    client = make_app(password=stored).test_client()
    assert client.get("/api/diagnostics", headers=basic(PASSWORD), environ_base=LAN).status_code == 404
    assert client.get("/api/diagnostics", headers=basic(stored), environ_base=LAN).status_code == 401  # not the hash


def test_a_password_that_looks_like_text_is_compared_as_text() -> None:
    assert not web_access.is_password_hash("pbkdf2 is my password")
    password = web_access.Password("scrypt:but-no-hash")
    assert password.matches("scrypt:but-no-hash") and not password.matches("scrypt")


def test_a_matched_hash_is_remembered_and_a_new_password_forgets_it() -> None:
    password = web_access.Password(web_access.hash_password(PASSWORD))
    assert password.matches(PASSWORD) and password.matches(PASSWORD) and not password.matches(PASSWORD + "x")
    password.set(web_access.hash_password("anderes-passwort"))
    assert not password.matches(PASSWORD) and password.matches("anderes-passwort")


# ---------------------------------------------------------------------------- host allowlist (DNS rebinding)
def test_the_dns_rebinding_attack_of_the_issue_is_403() -> None:
    # curl -H 'Host: evil.example:8080' -H 'Origin: http://evil.example:8080' -d '{"mode":"hold"}' .../api/mode
    for app in (make_app(), make_app(host="127.0.0.1")):
        client = app.test_client()
        headers = {"Host": "evil.example:8080", "Origin": "http://evil.example:8080"}
        resp = client.post("/api/mode", json={"mode": "hold"}, headers=headers)
        assert resp.status_code == 403
        assert "web.allowed_hosts" in resp.get_json()["error"]
        resp = client.get("/api/status", headers={"Host": "evil.example:8080"})  # reading neither
        assert resp.status_code == 403


@pytest.mark.parametrize("host", ["192.168.1.5:8080", "127.0.0.1", "[::1]:8080", "[fe80::1]", "localhost:8080",
                                  "LOCALHOST", "marstek.fritz.box:8080"])
def test_ip_literals_localhost_and_allowed_names_are_served(host: str) -> None:
    client = make_app(allowed_hosts=("marstek.fritz.box",)).test_client()
    assert client.get("/api/status", headers={"Host": host}).status_code == 200


def test_this_machines_own_name_is_served_with_and_without_local() -> None:
    name = socket.gethostname().split(".")[0].lower()
    client = make_app().test_client()
    for host in (f"{name}:8080", f"{name}.local:8080", f"{name}.local"):
        assert client.get("/api/status", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize("host", ["evil.example", "localhost.evil.example", "marstek.fritz.box.evil.example",
                                  "127.0.0.1.nip.io", "host:notaport"])
def test_other_host_names_are_403(host: str) -> None:
    client = make_app(allowed_hosts=("marstek.fritz.box",)).test_client()
    assert client.get("/", headers={"Host": host}).status_code == 403


def test_a_host_with_a_user_part_or_a_path_is_not_parsed() -> None:
    for netloc in ("evil@127.0.0.1", "127.0.0.1/x", "localhost:80#", "a b", ""):
        assert web_access.host_of(netloc) is None, netloc
        assert not web_access.host_allowed(netloc, (), ())
    assert web_access.host_of("[::1]:8080") == "::1" and web_access.host_of("LocalHost:80") == "localhost"
    assert not web_access.origin_allowed("http://x@marstek.fritz.box", "127.0.0.1:8080", ("marstek.fritz.box",))


# ---------------------------------------------------------------------------- CSRF against the allowed origins
@pytest.mark.parametrize(("host", "origin", "status"), [
    ("192.168.1.5:8080", "http://192.168.1.5:8080", 400),  # the dashboard itself
    ("127.0.0.1:8080", "https://marstek.fritz.box", 400),  # a reverse proxy's public name (allowed_hosts)
    ("192.168.1.5:8080", "http://192.0.2.66:8080", 403),  # a page on another address
    ("localhost:8080", "http://localhost:3000", 403),  # another program's page on this machine
    ("192.168.1.5:8080", "null", 403),
    ("192.168.1.5:8080", "file:///tmp/x.html", 403),
])
def test_the_origin_must_be_this_address_or_an_allowed_name(host: str, origin: str, status: int) -> None:
    client = make_app(allowed_hosts=("marstek.fritz.box",)).test_client()
    resp = client.post("/api/mode", json={"mode": "x"}, headers={"Host": host, "Origin": origin})
    assert resp.status_code == status


# ---------------------------------------------------------------------------- sessions
def login(client: Any) -> None:
    token = CSRF_RE.search(client.get("/login").get_data(as_text=True)).group(1)
    assert client.post("/login", data={"password": PASSWORD, "csrf_token": token}).status_code == 302


def test_the_session_cookie_is_httponly_samesite_strict_and_expires() -> None:
    client = make_app(password=PASSWORD, session_days=7).test_client()
    token = CSRF_RE.search(client.get("/login").get_data(as_text=True)).group(1)
    resp = client.post("/login", data={"password": PASSWORD, "csrf_token": token})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Expires=" in cookie


def test_a_logged_out_cookie_never_works_again() -> None:
    app = make_app(password=PASSWORD, read_only_without_login=False)
    client = app.test_client()
    login(client)
    kept = client.get_cookie("session").value
    assert client.get("/api/status").status_code == 200
    assert client.post("/logout").status_code == 200
    replay = app.test_client()
    replay.set_cookie("session", kept)
    assert replay.get("/api/status").status_code == 401
    assert replay.post("/api/mode", json={"mode": "x"}).status_code == 401


def test_a_session_ends_after_session_days() -> None:
    clock = FakeClock()
    client = make_app(clock, password=PASSWORD, read_only_without_login=False, session_days=2).test_client()
    login(client)
    clock.advance(2 * 86400 - 1)
    assert client.get("/api/status").status_code == 200
    clock.advance(1)
    assert client.get("/api/status").status_code == 401


def test_the_session_table_is_bounded() -> None:
    sessions = web_access.Sessions(100.0, FakeClock(), max_sessions=3)
    ids = [sessions.start() for _ in range(5)]
    assert len(sessions) == 3 and not sessions.valid(ids[0]) and sessions.valid(ids[4])
    assert not sessions.valid(None) and not sessions.valid(42)


# ---------------------------------------------------------------------------- trusted proxies
def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    trusted = make_app(password=PASSWORD, trusted_proxies=("10.0.0.2/32",)).test_client()
    wrong = {**basic("nope"), "X-Forwarded-For": "203.0.113.1, 192.0.2.7"}
    assert trusted.post("/api/mode", json={"mode": "x"}, headers=wrong, environ_base=proxy).status_code == 401
    right_other = {**basic(PASSWORD), "X-Forwarded-For": "192.0.2.8"}
    assert trusted.post("/api/mode", json={"mode": "x"}, headers=right_other, environ_base=proxy).status_code == 400
    right_same = {**basic(PASSWORD), "X-Forwarded-For": "192.0.2.7"}
    assert trusted.post("/api/mode", json={"mode": "x"}, headers=right_same, environ_base=proxy).status_code == 429

    untrusted = make_app(password=PASSWORD).test_client()  # the header is ignored: the proxy is the client
    assert untrusted.post("/api/mode", json={"mode": "x"}, headers=wrong, environ_base=proxy).status_code == 401
    assert untrusted.post("/api/mode", json={"mode": "x"}, headers=right_other, environ_base=proxy).status_code == 429


def test_client_address_walks_the_chain_from_the_right() -> None:
    nets = web_access.parse_networks(["10.0.0.0/8"])
    headers = {"X-Forwarded-For": "1.1.1.1, 192.0.2.9, 10.0.0.5"}
    assert web_access.client_address("10.0.0.2", headers.get, nets) == ("192.0.2.9", True)
    assert web_access.client_address("192.0.2.1", headers.get, nets) == ("192.0.2.1", True)
    assert web_access.client_address("10.0.0.2", {"X-Forwarded-For": "junk"}.get, nets) == ("10.0.0.2", True)
    assert web_access.client_address("10.0.0.2", {}.get, nets) == ("10.0.0.2", False)


# ---------------------------------------------------------------------------- deeply nested JSON
@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("body", [
    "[" * 6000, '{"a":' * 1200 + "1" + "}" * 1200, '{"mode": ' + "[" * 5000 + "]" * 5000 + "}",
])
def test_deeply_nested_json_is_a_400_not_a_500(path: str, body: str) -> None:
    client = make_app().test_client()
    resp = client.post(path, data=body, content_type="application/json")
    assert resp.status_code == 400
    assert "nested too deeply" in resp.get_json()["error"]


def test_nesting_inside_strings_does_not_count() -> None:
    assert not web_access.json_too_deep(json.dumps({"mode": "[" * 100}).encode())
    assert web_access.json_too_deep(b"[" * 33) and not web_access.json_too_deep(b"[" * 32)


# ---------------------------------------------------------------------------- /onboarding
def test_onboarding_exists_only_while_no_password_is_set() -> None:
    assert make_app(password=PASSWORD).test_client().get("/onboarding").status_code == 404
    client = make_app().test_client()
    assert client.get("/onboarding").status_code == 200


def test_the_dashboard_links_to_onboarding_while_no_password_is_set() -> None:
    assert 'id="onboarding-link"' in make_app().test_client().get("/").get_data(as_text=True)
    assert 'id="onboarding-link"' not in make_app(password=PASSWORD).test_client().get("/").get_data(as_text=True)


def test_onboarding_from_the_lan_explains_set_password_and_has_no_form() -> None:
    html = make_app().test_client().get("/onboarding", environ_base=LAN).get_data(as_text=True)
    assert "--set-password" in html and "http://localhost:8080/onboarding" in html
    assert 'name="password"' not in html


def test_onboarding_on_this_machine_stores_a_salted_hash_and_logs_in() -> None:
    saved: list[str] = []
    store_app = make_app(save_password=saved.append)
    client = store_app.test_client()
    token = CSRF_RE.search(client.get("/onboarding").get_data(as_text=True)).group(1)
    resp = client.post("/onboarding", data={"password": PASSWORD, "password2": PASSWORD + "x", "csrf_token": token})
    assert resp.status_code == 400 and i18n.EN["onboarding_err_password_mismatch"] in resp.get_data(as_text=True)
    token = CSRF_RE.search(resp.get_data(as_text=True)).group(1)
    resp = client.post("/onboarding", data={"password": "kurz", "password2": "kurz", "csrf_token": token})
    assert resp.status_code == 400 and saved == []
    token = CSRF_RE.search(resp.get_data(as_text=True)).group(1)
    resp = client.post("/onboarding", data={"password": PASSWORD, "password2": PASSWORD, "csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    assert len(saved) == 1 and PASSWORD not in saved[0] and check_password_hash(saved[0], PASSWORD)
    assert client.get("/onboarding").status_code == 404  # gone once a password is set
    assert 'id="logout"' in client.get("/").get_data(as_text=True)  # logged in
    lan = store_app.test_client()
    assert lan.post("/api/mode", json={"mode": "x"}, environ_base=LAN).status_code == 401
    assert lan.post("/api/mode", json={"mode": "x"}, headers=basic(PASSWORD), environ_base=LAN).status_code == 400


def test_onboarding_without_the_csrf_token_is_403() -> None:
    saved: list[str] = []
    client = make_app(save_password=saved.append).test_client()
    resp = client.post("/onboarding", data={"password": PASSWORD, "password2": PASSWORD})
    assert resp.status_code == 403 and saved == []


def test_onboarding_that_cannot_write_the_config_changes_nothing(tmp_path: Path) -> None:
    from config_loader import set_web_password

    missing = tmp_path / "gone" / "config.json"
    client = make_app(save_password=lambda stored: set_web_password(missing, stored)).test_client()
    token = CSRF_RE.search(client.get("/onboarding").get_data(as_text=True)).group(1)
    resp = client.post("/onboarding", data={"password": PASSWORD, "password2": PASSWORD, "csrf_token": token})
    assert resp.status_code == 500 and i18n.EN["onboarding_err_save_failed"] in resp.get_data(as_text=True)
    assert client.get("/onboarding").status_code == 200  # still no password


# ---------------------------------------------------------------------------- --set-password
def minimal_config(path: Path) -> None:
    path.write_text(json.dumps({"battery": {"ip": "192.0.2.10", "akku_ids": [1]}, "shelly": {"ip": "192.0.2.11"},
                                "web": {"host": "0.0.0.0", "port": 8080}}, indent=2), encoding="utf-8")


def run_set_password(config: Path, answers: list[str]) -> tuple[int, str]:
    """``main.py --set-password`` on a real terminal (a pty), typing ``answers``; (exit status, output)."""
    return run_on_terminal([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--set-password"],
                           answers)


def run_on_terminal(command: list[str], answers: list[str]) -> tuple[int, str]:
    """``command`` on a real terminal (a pty, no controlling one: getpass falls back to it), typing ``answers``
    after each prompt ending in ":"; (exit status, output)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, start_new_session=True,
                            cwd=ROOT)
    os.close(follower)
    output = b""
    pending = list(answers)
    answered = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the program ended and closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if pending and output[answered:].rstrip().endswith(b":"):  # a new prompt: type the next answer
            os.write(leader, pending.pop(0).encode() + b"\n")
            answered = len(output)
    else:
        proc.kill()
        raise AssertionError(f"--set-password did not end; it said: {output!r}")
    os.close(leader)
    return proc.wait(timeout=30), output.decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_set_password_asks_twice_and_stores_a_salted_hash(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    minimal_config(config)
    status, output = run_set_password(config, [PASSWORD, PASSWORD])
    assert status == 0, output
    stored = json.loads(config.read_text(encoding="utf-8"))["web"]["password"]
    assert web_access.is_password_hash(stored) and check_password_hash(stored, PASSWORD)
    assert PASSWORD not in output and PASSWORD not in config.read_text(encoding="utf-8")  # not echoed, not stored
    assert json.loads(config.read_text(encoding="utf-8"))["web"]["port"] == 8080  # the rest is kept
    assert (tmp_path / "config.json.bak").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_set_password_with_two_different_answers_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    minimal_config(config)
    before = config.read_text(encoding="utf-8")
    status, output = run_set_password(config, [PASSWORD, PASSWORD + "x"])
    assert status == 1 and ("differ" in output or "verschieden" in output)
    assert config.read_text(encoding="utf-8") == before


def test_set_password_without_a_terminal_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    minimal_config(config)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--set-password"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2 and "--set-password" in proc.stderr
