"""Interop tier: runs the real `herald` binary and drives it with slixmpp clients.

Fixtures:
  server       one herald per test module (isolation between tests comes from fresh
               accounts: `server.user()` creates a new account each call)
  make_server  a dedicated herald for one test (custom config, restarts, signals)
  xmpp         factory for connected slixmpp clients; all are disconnected at teardown

Waiting is event-driven: `Client.expect()` waits (bounded) for a stanza matching a
predicate. Negative checks ("X was NOT delivered") use barriers instead of sleeps:
`sender.roundtrip()` returns once the server has processed everything the sender sent
before it, and `receiver.drain()` returns once everything the server queued for the
receiver before it has arrived.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import atexit
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import slixmpp
from slixmpp.xmlstream import ET
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

HERALD_BIN = os.environ.get("HERALD_BIN", "/work/main/target/debug/herald")
DOMAIN = "example.test"
COMPONENT_DOMAIN = "bot.example.test"
COMPONENT_SECRET = "componentsecret"
HOST = "127.0.0.1"
WAIT = 5.0  # default bound for any single awaited event

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)

_RUNNING: list["Server"] = []
_user_counter = itertools.count(1)


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports. The sockets are held until all are bound: a port released
    at once could come back from the next bind to port 0."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


class _CannotListen(AssertionError):
    """The server could not bind one of its ports."""


_pg_databases: list[str] = []


def _psql(sql: str) -> None:
    r = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qtAc", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, f"psql failed: {sql}: {r.stderr}"


def make_pg_database() -> str:
    """A fresh PostgreSQL database for one server (HERALD_TEST_STORAGE=postgres)."""
    name = f"herald_interop_{os.getpid()}_{len(_pg_databases)}"
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _psql(f"CREATE DATABASE {name}")
    _pg_databases.append(name)
    return f"postgres://postgres@127.0.0.1:5432/{name}"


@atexit.register
def _drop_pg_databases() -> None:
    for name in _pg_databases:
        try:
            _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except Exception:  # best effort at exit
            pass


class Server:
    """A herald process with its own config, data dir and ports."""

    def __init__(self, root: Path, name: str = "herald", extra_toml: str = ""):
        self.root = root
        self.name = name
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.config = root / "herald.toml"
        self.log_path = root / "herald.log"
        self.host = HOST
        self.domain = DOMAIN
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._started = False
        self._extra_toml = extra_toml
        self._storage = ""
        if os.environ.get("HERALD_TEST_STORAGE") == "postgres":
            self._storage = f'[storage]\nurl = "{make_pg_database()}"\n'
        self._pick_ports()

    def _pick_ports(self) -> None:
        """Chooses this server's ports and writes its config."""
        (
            self.c2s_port,
            self.direct_tls_port,
            self.http_port,
            self.https_port,
            self.component_port,
            self.proxy65_port,
        ) = free_ports(6)
        storage, extra_toml = self._storage, self._extra_toml
        self.config.write_text(
            f"""
[server]
domains = ["{DOMAIN}"]
data_dir = "{self.data_dir}"
shutdown_grace_secs = 2
{storage}

[listen]
c2s = ["{HOST}:{self.c2s_port}"]
c2s_direct_tls = ["{HOST}:{self.direct_tls_port}"]
http = ["{HOST}:{self.http_port}"]
https = ["{HOST}:{self.https_port}"]
component = ["{HOST}:{self.component_port}"]
proxy65 = ["{HOST}:{self.proxy65_port}"]

[auth]
# every test connects from 127.0.0.1: keep the per-IP failure throttle out of the way
max_failures = 1000

[log]
level = "info"

[[component]]
domain = "{COMPONENT_DOMAIN}"
secret = "{COMPONENT_SECRET}"
{extra_toml}
"""
        )

    # -- accounts -------------------------------------------------------------------
    def add_user(self, jid: str, password: str) -> None:
        r = subprocess.run(
            [HERALD_BIN, "-c", str(self.config), "user", "add", jid, "--password-stdin"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, f"user add {jid} failed: {r.stdout}{r.stderr}"

    def user(self, prefix: str = "u") -> tuple[str, str]:
        """Creates a fresh account; returns (bare JID, password)."""
        name = f"{prefix}{next(_user_counter)}"
        jid, pw = f"{name}@{DOMAIN}", f"pw-{name}-secret"
        self.add_user(jid, pw)
        return jid, pw

    # -- process ----------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Starts the server and waits for its c2s port. On a first start, a port taken by
        another connection between `free_ports` and the server's bind ("cannot listen")
        is retried on fresh ports; a restart keeps its ports, as clients expect."""
        for attempt in range(3):
            try:
                self._start_once(timeout)
                self._started = True
                return
            except _CannotListen:
                if self._started or attempt == 2:
                    raise
                self._pick_ports()

    def _start_once(self, timeout: float) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ)
        env.pop("HERALD_LOG", None)
        env["NO_COLOR"] = "1"  # plain log text for failure reports
        self.proc = subprocess.Popen(
            [HERALD_BIN, "-c", str(self.config), "serve"],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        if self not in _RUNNING:
            _RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._close_log()
                log = self.log()
                kind = _CannotListen if "cannot listen on" in log else AssertionError
                raise kind(f"herald exited with {self.proc.returncode} during startup\n{log}")
            try:
                with socket.create_connection((HOST, self.c2s_port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"c2s port never opened\n{self.log()}")
                time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM; asserts a clean exit (status 0) within `timeout` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
            raise AssertionError(f"herald did not exit within {timeout}s of SIGTERM\n{self.log()}")
        self._close_log()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log(self, tail: int = 300) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-tail:])


def _shutdown(srv: Server) -> None:
    try:
        rc = srv.stop(timeout=5.0)
        assert rc == 0, f"herald exited with status {rc} after SIGTERM\n{srv.log()}"
    finally:
        srv.kill()
        if srv in _RUNNING:
            _RUNNING.remove(srv)


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    srv = Server(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    srv.start()
    yield srv
    _shutdown(srv)


@pytest.fixture
def make_server(tmp_path):
    made: list[Server] = []

    def make(extra_toml: str = "", start: bool = True) -> Server:
        srv = Server(tmp_path / f"srv{len(made)}", extra_toml=extra_toml)
        made.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    errors = []
    for srv in made:
        try:
            _shutdown(srv)
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, "\n".join(errors)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for srv in list(_RUNNING):
            rep.sections.append((f"herald log ({srv.root})", srv.log()))


# ---------------------------------------------------------------------------------------
# XML helpers


def child(stanza, ns: str, name: str):
    """First child element `{ns}name` of a slixmpp stanza (or ET element), or None."""
    xml = stanza.xml if hasattr(stanza, "xml") else stanza
    return xml.find(f"{{{ns}}}{name}")


def body(stanza) -> str | None:
    b = child(stanza, "jabber:client", "body")
    if b is None:
        b = child(stanza, "jabber:component:accept", "body")
    return None if b is None else b.text


def error_condition(stanza) -> str | None:
    """The defined condition of a stanza error, e.g. 'service-unavailable'."""
    xml = stanza.xml if hasattr(stanza, "xml") else stanza
    for err in xml:
        if err.tag.endswith("}error"):
            for c in err:
                if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}") and not c.tag.endswith("}text"):
                    return c.tag.split("}", 1)[1]
    return None


def error_type(stanza) -> str | None:
    xml = stanza.xml if hasattr(stanza, "xml") else stanza
    for err in xml:
        if err.tag.endswith("}error"):
            return err.get("type")
    return None


class IqFailed(AssertionError):
    def __init__(self, iq):
        self.iq = iq
        self.condition = error_condition(iq)
        super().__init__(f"IQ error {self.condition}: {iq}")


# ---------------------------------------------------------------------------------------
# clients


class Client:
    """A connected slixmpp ClientXMPP plus a record of every stanza it received."""

    def __init__(self, x: slixmpp.BaseXMPP, ns: str = "jabber:client"):
        self.x = x
        self.ns = ns
        self.received: dict[str, list] = {"message": [], "presence": [], "iq": []}
        self._taken: set[int] = set()
        self._new = asyncio.Event()
        self.stream_errors: list[str] = []
        self.failed_auth = 0
        self.disconnected = asyncio.get_running_loop().create_future()
        for kind in self.received:
            x.register_handler(
                Callback(f"interop {kind}", MatchXPath(f"{{{ns}}}{kind}"), self._record(kind))
            )
        x.add_event_handler("stream_error", self._on_stream_error)
        x.add_event_handler("failed_auth", self._on_failed_auth)
        x.add_event_handler("disconnected", self._on_disconnected)

    # event plumbing
    def _record(self, kind):
        def handler(stanza):
            self.received[kind].append(stanza)
            self._new.set()

        return handler

    def _on_stream_error(self, err):
        self.stream_errors.append(err["condition"])
        self._new.set()

    def _on_failed_auth(self, _):
        self.failed_auth += 1

    def _on_disconnected(self, _):
        if not self.disconnected.done():
            self.disconnected.set_result(True)
        self._new.set()

    @property
    def jid(self) -> str:
        return str(self.x.boundjid.full)

    @property
    def bare(self) -> str:
        return str(self.x.boundjid.bare)

    # waiting
    async def expect(self, kind: str, pred: Callable = lambda s: True, what: str = "",
                     timeout: float = WAIT):
        """Waits for (and consumes) the first not-yet-consumed `kind` stanza matching pred."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for s in self.received[kind]:
                if id(s) not in self._taken and pred(s):
                    self._taken.add(id(s))
                    return s
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                got = "\n  ".join(str(s) for s in self.received[kind][-10:])
                raise AssertionError(
                    f"{self.jid}: no {kind} {what} within {timeout}s; last received:\n  {got}"
                )
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except asyncio.TimeoutError:
                pass

    def seen(self, kind: str, pred: Callable) -> list:
        return [s for s in self.received[kind] if pred(s)]

    async def expect_message(self, text: str, **kw):
        return await self.expect("message", lambda m: body(m) == text, f"with body {text!r}", **kw)

    # barriers
    async def iq(self, type_: str, to: str | None, payload: str | None, timeout: float = WAIT):
        """Sends an IQ with a raw XML payload; returns the result; raises IqFailed on error."""
        iq = self.x.Iq()
        iq["type"] = type_
        if to:
            iq["to"] = to
        if payload:
            iq.append(ET.fromstring(payload))
        try:
            return await iq.send(timeout=timeout)
        except slixmpp.exceptions.IqError as e:
            raise IqFailed(e.iq) from None
        except slixmpp.exceptions.IqTimeout:
            raise AssertionError(f"{self.jid}: no answer to IQ {payload!r} to {to} within {timeout}s")

    async def roundtrip(self):
        """Returns once the server has finished processing all we sent before."""
        await self.iq("get", DOMAIN, "<ping xmlns='urn:xmpp:ping'/>")

    async def drain(self):
        """Returns once everything the server routed to us before now has arrived."""
        marker = f"drain-{id(self)}-{time.monotonic_ns()}"
        self.x.send_message(mto=self.jid, mbody=marker, mtype="normal")
        await self.expect_message(marker)

    def send(self, xml: str):
        self.x.send_raw(xml)

    async def close(self, timeout: float = WAIT):
        if self.disconnected.done():
            return
        try:
            await asyncio.wait_for(self.x.disconnect(wait=2.0), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.x.abort()
        await asyncio.wait_for(asyncio.shield(self.disconnected), timeout)


class Xmpp:
    """Factory fixture: `await xmpp.connect(jid, pw, ...)`."""

    def __init__(self, server: Server):
        self.server = server
        self.clients: list[Client] = []

    def _client(self, jid, password, mech):
        x = slixmpp.ClientXMPP(jid, password, sasl_mech=mech)
        x.ssl_context.check_hostname = False
        x.ssl_context.verify_mode = ssl.CERT_NONE
        x.auto_authorize = None  # subscriptions are answered by the tests
        x.auto_subscribe = False
        return x

    async def login(self, jid: str, password: str, *, resource: str | None = None,
                    direct_tls: bool = False, mech: str | None = None,
                    server: Server | None = None, plugins=()) -> tuple[Client, str]:
        """Connects and authenticates. Returns (client, outcome) with outcome one of
        'session', 'failed_auth', 'disconnected'."""
        srv = server or self.server
        full = f"{jid}/{resource}" if resource else jid
        x = self._client(full, password, mech)
        for p in plugins:
            x.register_plugin(p)
        x.enable_direct_tls = direct_tls
        x.enable_starttls = not direct_tls
        x.enable_plaintext = False
        c = Client(x)
        self.clients.append(c)
        loop = asyncio.get_running_loop()
        outcome = loop.create_future()

        def done(result):
            return lambda *_: outcome.done() or outcome.set_result(result)

        x.add_event_handler("session_start", done("session"))
        x.add_event_handler("failed_all_auth", done("failed_auth"))
        x.add_event_handler("disconnected", done("disconnected"))
        x.connect(srv.host, srv.direct_tls_port if direct_tls else srv.c2s_port)
        try:
            result = await asyncio.wait_for(outcome, 15)
        except asyncio.TimeoutError:
            raise AssertionError(f"{full}: no session_start / auth failure within 15s")
        return c, result

    async def connect(self, jid: str, password: str, *, resource: str | None = None,
                      presence: bool = True, priority: int | None = None, roster: bool = True,
                      server: Server | None = None, **kw) -> Client:
        """A client with a bound session; by default it fetched its roster and sent initial
        presence, and the server has processed both."""
        c, result = await self.login(jid, password, resource=resource, server=server, **kw)
        assert result == "session", f"{jid}: login failed ({result}); stream errors {c.stream_errors}"
        if roster:
            await c.iq("get", None, "<query xmlns='jabber:iq:roster'/>")
        if presence:
            if priority is None:
                c.x.send_presence()
            else:
                c.x.send_presence(ppriority=priority)
        await c.roundtrip()
        return c

    async def component(self, secret: str = COMPONENT_SECRET, server: Server | None = None,
                        domain: str = COMPONENT_DOMAIN) -> tuple[Client, str]:
        srv = server or self.server
        x = slixmpp.ComponentXMPP(domain, secret, srv.host, srv.component_port)
        x.enable_direct_tls = False
        x.enable_starttls = False
        x.enable_plaintext = True
        c = Client(x, ns="jabber:component:accept")
        self.clients.append(c)
        outcome = asyncio.get_running_loop().create_future()
        x.add_event_handler("session_start", lambda *_: outcome.done() or outcome.set_result("session"))
        x.add_event_handler("disconnected", lambda *_: outcome.done() or outcome.set_result("disconnected"))
        x.connect(srv.host, srv.component_port)
        try:
            result = await asyncio.wait_for(outcome, 15)
        except asyncio.TimeoutError:
            raise AssertionError("component: no handshake result within 15s")
        return c, result

    async def close_all(self):
        for c in self.clients:
            try:
                await c.close(timeout=3)
            except Exception:
                c.x.abort()


@pytest.fixture
async def xmpp(request):
    srv = request.getfixturevalue("server") if "server" in request.fixturenames else None
    f = Xmpp(srv)
    yield f
    await f.close_all()
