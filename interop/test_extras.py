"""XEP-0077 in-band registration, XEP-0215 external services and XEP-0157 contact
addresses, driven by slixmpp."""

import asyncio
import base64
import hashlib
import hmac
import time

import pytest

from conftest import DOMAIN, Client, IqFailed, child

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DATA = "jabber:x:data"
EXTDISCO = "urn:xmpp:extdisco:2"
REGISTER = "jabber:iq:register"

REGISTRATION_ON = '[registration]\nenabled_domains = ["example.test"]\n'


async def register_and_login(xmpp, srv, jid: str, password: str) -> tuple[Client, str, list]:
    """A slixmpp client that registers `jid` in-band (XEP-0077 stream feature) and then
    authenticates with it. Returns (client, outcome, registration errors)."""
    x = xmpp._client(jid, password, None)
    for p in ("xep_0030", "xep_0004", "xep_0066", "xep_0077"):
        x.register_plugin(p)
    x.enable_starttls = True
    x.enable_direct_tls = False
    x.enable_plaintext = False
    errors: list = []

    async def on_register(_form):
        resp = x.Iq()
        resp["type"] = "set"
        resp["register"]["username"] = x.boundjid.user
        resp["register"]["password"] = password
        try:
            await resp.send(timeout=10)
        except Exception as e:  # IqError / IqTimeout: recorded for the test
            errors.append(e)

    x.add_event_handler("register", on_register)
    c = Client(x)
    xmpp.clients.append(c)
    outcome = asyncio.get_running_loop().create_future()

    def done(result):
        return lambda *_: outcome.done() or outcome.set_result(result)

    x.add_event_handler("session_start", done("session"))
    x.add_event_handler("failed_all_auth", done("failed_auth"))
    x.add_event_handler("disconnected", done("disconnected"))
    x.connect(srv.host, srv.c2s_port)
    result = await asyncio.wait_for(outcome, 20)
    return c, result, errors


async def test_register_change_password_and_login(make_server, xmpp):
    srv = make_server(REGISTRATION_ON)
    jid, pw = f"ibr{time.monotonic_ns()}@{DOMAIN}", "first-password"
    c, result, errors = await register_and_login(xmpp, srv, jid, pw)
    assert result == "session" and not errors, f"{result} {errors}\n{srv.log()}"
    info = await c.x.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=10)
    assert REGISTER in info["disco_info"]["features"]
    await c.x.plugin["xep_0077"].change_password("second-password", jid=DOMAIN, timeout=10)
    await c.close()
    c2 = await xmpp.connect(jid, "second-password", server=srv)
    await c2.roundtrip()
    _, outcome = await xmpp.login(jid, pw, server=srv)
    # slixmpp tries each SASL mechanism; after the third failure the server closes the stream.
    assert outcome in ("failed_auth", "disconnected"), "the old password no longer works"


async def test_register_duplicate_is_a_conflict(make_server, xmpp):
    srv = make_server(REGISTRATION_ON)
    jid, pw = srv.user("dup")
    _, result, errors = await register_and_login(xmpp, srv, jid, "some-other-password")
    assert result in ("failed_auth", "disconnected"), result
    assert errors and getattr(errors[0], "iq", None) is not None, errors
    assert errors[0].iq["error"]["condition"] == "conflict"


async def test_registration_off_by_default(server, xmpp):
    jid, pw = server.user("noibr")
    c = await xmpp.connect(jid, pw, plugins=["xep_0030"])
    info = await c.x.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=10)
    assert REGISTER not in info["disco_info"]["features"]
    with pytest.raises(IqFailed) as e:
        await c.iq("set", DOMAIN,
                   f"<query xmlns='{REGISTER}'><username>{jid.split('@')[0]}</username>"
                   "<password>whatever-password</password></query>")
    assert e.value.condition == "not-allowed"


async def test_contact_addresses_form(make_server, xmpp):
    srv = make_server('[contact]\nabuse = ["mailto:abuse@example.test"]\n'
                      'admin = ["xmpp:admin@example.test"]\n')
    jid, pw = srv.user("contact")
    c = await xmpp.connect(jid, pw, server=srv, plugins=["xep_0030", "xep_0004", "xep_0128"])
    info = await c.x.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=10)
    query = child(info, DISCO_INFO, "query")
    forms = query.findall(f"{{{DATA}}}x")
    assert len(forms) == 1, [f for f in forms]
    fields = {
        f.get("var"): [v.text for v in f.findall(f"{{{DATA}}}value")]
        for f in forms[0].findall(f"{{{DATA}}}field")
    }
    assert fields["FORM_TYPE"] == ["http://jabber.org/network/serverinfo"]
    assert fields["abuse-addresses"] == ["mailto:abuse@example.test"]
    assert fields["admin-addresses"] == ["xmpp:admin@example.test"]


async def test_external_services_with_turn_credentials(make_server, xmpp):
    secret = "interop-turn-secret-0123"
    srv = make_server(f"""
[[external_service]]
type = "turn"
host = "turn.example.test"
port = 3478
transport = "udp"
secret = "{secret}"
ttl_secs = 600

[[external_service]]
type = "stun"
host = "stun.example.test"
port = 3478
""")
    jid, pw = srv.user("turn")
    c = await xmpp.connect(jid, pw, server=srv, plugins=["xep_0030"])
    info = await c.x.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=10)
    assert EXTDISCO in info["disco_info"]["features"]
    r = await c.iq("get", DOMAIN, f"<services xmlns='{EXTDISCO}'/>")
    services = child(r, EXTDISCO, "services").findall(f"{{{EXTDISCO}}}service")
    assert [s.get("type") for s in services] == ["turn", "stun"]
    turn = services[0]
    username = turn.get("username")
    expiry, user = username.split(":", 1)
    assert user == jid
    assert abs(int(expiry) - (time.time() + 600)) < 120
    expected = base64.b64encode(
        hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert turn.get("password") == expected
    assert turn.get("expires", "").endswith("Z")
    r = await c.iq("get", DOMAIN, f"<credentials xmlns='{EXTDISCO}'>"
                   "<service host='turn.example.test' type='turn'/></credentials>")
    creds = child(r, EXTDISCO, "credentials").findall(f"{{{EXTDISCO}}}service")
    assert len(creds) == 1 and creds[0].get("username", "").endswith(":" + jid)
