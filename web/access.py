"""Who may use the web server: the password (plain or salted hash), sessions, allowed host names, client address.

interfaces.md "Access: locked by default". The pieces are small and free of Flask so that tests can drive them
with a fake clock; ``web_server`` wires them into its request guard.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from werkzeug.security import check_password_hash, generate_password_hash

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # a longer "password" is a mistake (or an attack on the hash's CPU time)
MAX_SESSIONS = 1000  # bounds the table; the oldest session goes first
LOGIN_BLOCK_FIRST_S = 1.0  # blocked after the first wrong password; doubles with each further one
LOGIN_BLOCK_MAX_S = 60.0
LOGIN_FORGET_AFTER_S = 900.0  # a client without a wrong password for this long starts again at 1 s
LOGIN_MAX_CLIENTS = 4096  # bounds the table when many addresses try
MAX_JSON_DEPTH = 32  # our bodies are flat objects; anything deeper is refused before it is parsed
# werkzeug's format "<method>$<salt>$<hex digest>", method "scrypt:..." or "pbkdf2:...".
_HASH_RE = re.compile(r"^(scrypt|pbkdf2):[A-Za-z0-9:_-]*\$[^$\s]+\$[0-9a-f]{32,}$")


# ---------------------------------------------------------------------------- the password
def is_password_hash(value: str) -> bool:
    """True when ``value`` is a hash written by ``hash_password`` (else ``web.password`` is the plain text)."""
    return bool(_HASH_RE.match(value))


def hash_password(plain: str) -> str:
    """A salted hash for ``web.password`` (werkzeug.security: scrypt with a random salt)."""
    return generate_password_hash(plain)


def password_problem(plain: str, repeated: str) -> str | None:
    """The message code of what is wrong with a new password (None: fine)."""
    if plain != repeated:
        return "password_mismatch"
    if len(plain) < MIN_PASSWORD_LENGTH:
        return "password_too_short"
    if len(plain) > MAX_PASSWORD_LENGTH:
        return "password_too_long"
    return None


class Password:
    """The current ``web.password`` (None: not set), replaceable at run time by /onboarding. Thread-safe.

    A hash costs ~0.1 s to check (scrypt); evcc or Home Assistant send Basic auth with every request. So a
    candidate that matched once is remembered as a keyed digest (HMAC with a key of this process only, never
    stored), and the same candidate is then compared in constant time without the hash.
    """

    def __init__(self, stored: str | None) -> None:
        self._lock = threading.Lock()
        self._stored = stored or None
        self._key = secrets.token_bytes(32)
        self._verified: bytes | None = None

    @property
    def is_set(self) -> bool:
        with self._lock:
            return self._stored is not None

    def set(self, stored: str) -> None:
        with self._lock:
            self._stored = stored
            self._verified = None

    def matches(self, candidate: str) -> bool:
        with self._lock:
            stored, verified = self._stored, self._verified
        if stored is None:
            return False
        digest = hmac.new(self._key, candidate.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        if verified is not None and hmac.compare_digest(digest, verified):
            return True
        if is_password_hash(stored):
            ok = len(candidate) <= MAX_PASSWORD_LENGTH and check_password_hash(stored, candidate)
        else:
            # Bytes: compare_digest raises TypeError for str with non-ASCII characters.
            ok = hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), stored.encode("utf-8"))
        if ok:
            with self._lock:
                if self._stored == stored:
                    self._verified = digest
        return ok


# ---------------------------------------------------------------------------- sessions
class Sessions:
    """Server-side session ids: a session ends after ``lifetime_s`` or at logout, and an ended one never
    works again (the cookie only carries the id). ``clock``: monotonic seconds. Thread-safe."""

    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.monotonic,
                 max_sessions: int = MAX_SESSIONS) -> None:
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._max = max_sessions
        self._lock = threading.Lock()
        self._started: OrderedDict[str, float] = OrderedDict()

    def start(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._started[sid] = self._clock()
            while len(self._started) > self._max:
                self._started.popitem(last=False)
        return sid

    def valid(self, sid: object) -> bool:
        if not isinstance(sid, str):
            return False
        with self._lock:
            started = self._started.get(sid)
            if started is None:
                return False
            if self._clock() - started >= self._lifetime_s:
                del self._started[sid]
                return False
            return True

    def end(self, sid: object) -> None:
        if isinstance(sid, str):
            with self._lock:
                self._started.pop(sid, None)

    def end_all(self) -> None:
        with self._lock:
            self._started.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._started)


# ---------------------------------------------------------------------------- host names (DNS rebinding)
def own_host_names() -> frozenset[str]:
    """This machine's names as a browser may use them: ``name``, ``name.local`` (mDNS), and the FQDN's first label."""
    names: set[str] = set()
    try:
        full = socket.gethostname().strip().lower().rstrip(".")
    except OSError:
        return frozenset()
    for name in (full, full.split(".")[0]):
        if name:
            names.add(name)
            names.add(name.removesuffix(".local") + ".local")
            names.add(name.removesuffix(".local"))
    return frozenset(names)


def host_of(netloc: str) -> str | None:
    """The host name or IP of ``host[:port]`` (IPv6 in brackets), lower case; None when it cannot be parsed."""
    if not netloc or any(c in netloc for c in "@/?#\\ \t"):
        return None  # a user part or a path is no Host header a browser sends
    try:
        parts = urlsplit("//" + netloc)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parts.hostname or None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is not part of the address
    except ValueError:
        return False
    return True


def host_allowed(netloc: str, allowed_hosts: Iterable[str], own_names: Iterable[str]) -> bool:
    """May a request with this ``Host`` header be served? IP literals, localhost, this machine's names and
    ``web.allowed_hosts``; any other name may be an attacker's domain that resolves to us (DNS rebinding)."""
    name = host_of(netloc)
    if name is None:
        return False
    return is_ip_literal(name) or name == "localhost" or name in own_names or name in allowed_hosts


def origin_allowed(origin: str, request_host: str, allowed_hosts: Iterable[str]) -> bool:
    """CSRF: may a browser request from page ``origin`` (an Origin or Referer URL) change something?

    Only from the exact address the request was sent to — whose Host already passed ``host_allowed`` — or
    from a name in ``web.allowed_hosts`` (any port: a reverse proxy's public name). ``Origin: null`` never.
    """
    try:
        parts = urlsplit(origin)
        _ = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or host_of(parts.netloc) is None:
        return False
    if parts.netloc.lower() == request_host.lower():
        return True
    return parts.hostname is not None and parts.hostname in allowed_hosts


# ---------------------------------------------------------------------------- the client's address
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(entries: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def client_address(remote_addr: str | None, header: Callable[[str], str | None],
                   trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> tuple[str, bool]:
    """``(address, forwarded)`` of the client: ``remote_addr``, or — only when that is a trusted proxy — the
    rightmost address in ``X-Forwarded-For`` that is not a trusted proxy itself. ``forwarded`` is True when the
    request came through a proxy (then a loopback peer is not a local user). ``header``: a header by name."""
    peer = remote_addr or "unknown"
    forwarded_for = header("X-Forwarded-For")
    has_proxy_header = bool(forwarded_for or header("Forwarded") or header("X-Real-IP"))
    peer_ip = _ip(peer)
    if not forwarded_for or peer_ip is None or not any(peer_ip in net for net in trusted_proxies):
        return peer, has_proxy_header
    for hop in reversed(forwarded_for.split(",")):
        hop_ip = _ip(hop)
        if hop_ip is None:
            return peer, True  # garbage in the chain: the last trustworthy hop is the proxy
        if not any(hop_ip in net for net in trusted_proxies):
            return str(hop_ip), True
    return peer, True


def is_loopback(address: str) -> bool:
    ip = _ip(address)
    return ip is not None and ip.is_loopback


# ---------------------------------------------------------------------------- JSON bodies
def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``raw`` nests arrays/objects deeper than ``limit`` (checked before parsing: a deep body
    would otherwise raise RecursionError inside the JSON parser)."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


# ---------------------------------------------------------------------------- failed logins
class LoginBlocked(Exception):
    """A client that must wait before its password is checked again (answered with 429 and Retry-After)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"blocked for {retry_after_s:.1f} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class _Failures:
    count: int
    last_failure_s: float
    blocked_until_s: float


class LoginThrottle:
    """Wrong passwords per client address, and how long each client is blocked.

    After the n-th wrong password in a row a client is blocked for ``first_s * 2**(n-1)`` seconds, at
    most ``max_s``; a right password forgets it. Memory is bounded: a client without a wrong password
    for ``forget_after_s`` is forgotten, and at most ``max_clients`` are kept (the one whose last wrong
    password is oldest goes first). Nothing sleeps: a blocked client is refused at once. Thread-safe.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        first_s: float = LOGIN_BLOCK_FIRST_S,
        max_s: float = LOGIN_BLOCK_MAX_S,
        forget_after_s: float = LOGIN_FORGET_AFTER_S,
        max_clients: int = LOGIN_MAX_CLIENTS,
    ) -> None:
        if not 0 < first_s <= max_s < forget_after_s or max_clients < 1:
            raise ValueError("need 0 < first_s <= max_s < forget_after_s and max_clients >= 1")
        self._clock = clock
        self._first_s = first_s
        self._max_s = max_s
        self._forget_after_s = forget_after_s
        self._max_clients = max_clients
        self._clients: OrderedDict[str, _Failures] = OrderedDict()  # oldest last failure first
        self._lock = threading.Lock()

    def attempt(self, client: str, check: Callable[[], bool]) -> bool:
        """Run ``check`` (the password comparison) for ``client``; raise LoginBlocked while it is blocked.

        True: right, the client's failures are forgotten. False: wrong, the client is now blocked.
        Check and bookkeeping happen under one lock, so parallel requests get no extra tries.
        """
        with self._lock:
            now = self._clock()
            self._forget_old(now)
            entry = self._clients.get(client)
            if entry is not None and entry.blocked_until_s > now:
                raise LoginBlocked(entry.blocked_until_s - now)
            if check():
                self._clients.pop(client, None)
                return True
            count = 1 if entry is None else entry.count + 1
            block_s = min(self._first_s * 2.0 ** min(count - 1, 30), self._max_s)
            self._clients.pop(client, None)
            self._clients[client] = _Failures(count, now, now + block_s)
            while len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
            return False

    def blocked_s(self, client: str) -> float:
        """Seconds until ``client``'s password is checked again (0: now)."""
        with self._lock:
            now = self._clock()
            entry = self._clients.get(client)
            return 0.0 if entry is None else max(0.0, entry.blocked_until_s - now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)

    def _forget_old(self, now: float) -> None:
        while self._clients:
            oldest = next(iter(self._clients.values()))
            if now - oldest.last_failure_s < self._forget_after_s:
                return
            self._clients.popitem(last=False)
