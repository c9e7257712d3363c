"""Stream negotiation and authentication as a client sees it."""

import asyncio

import pytest

from conftest import DOMAIN

MECHS = ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"]


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "direct_tls"])
@pytest.mark.parametrize("mech", MECHS)
async def test_login_each_mechanism(server, xmpp, mech, direct_tls):
    jid, pw = server.user("login")
    c, result = await xmpp.login(jid, pw, resource="r1", mech=mech, direct_tls=direct_tls)
    assert result == "session", f"{mech} over {'direct TLS' if direct_tls else 'STARTTLS'}: {result}"
    assert c.x.boundjid.full == f"{jid}/r1"
    assert c.x.socket is not None and hasattr(c.x.socket, "version"), "stream is not TLS"
    await c.roundtrip()


async def test_default_mechanism_negotiation(server, xmpp):
    """No restriction: slixmpp picks the best mechanism the server offers and succeeds."""
    jid, pw = server.user("login")
    c, result = await xmpp.login(jid, pw)
    assert result == "session"
    offered = set(c.x.plugin["feature_mechanisms"].mech_list)
    for m in MECHS:
        assert m in offered, f"{m} not offered: {offered}"
    await c.roundtrip()


async def test_server_assigns_resource(server, xmpp):
    jid, pw = server.user("login")
    c, result = await xmpp.login(jid, pw)
    assert result == "session"
    assert c.x.boundjid.bare == jid and c.x.boundjid.resource, c.x.boundjid


@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-1"])
async def test_wrong_password_fails(server, xmpp, mech):
    jid, _ = server.user("login")
    c, result = await xmpp.login(jid, "not-the-password", mech=mech)
    assert result == "failed_auth", result
    assert c.failed_auth >= 1


async def test_unknown_user_fails(server, xmpp):
    c, result = await xmpp.login(f"nobody-here@{DOMAIN}", "whatever", mech="SCRAM-SHA-256")
    assert result == "failed_auth", result


async def test_resource_conflict(server, xmpp):
    """A second login with the same full JID replaces the first (RFC 6120 §7.7.2.2)."""
    jid, pw = server.user("conf")
    first = await xmpp.connect(jid, pw, resource="same")
    second = await xmpp.connect(jid, pw, resource="same")
    await asyncio.wait_for(asyncio.shield(first.disconnected), 5)
    assert "conflict" in first.stream_errors, f"first session got {first.stream_errors}"
    assert second.jid == f"{jid}/same"
    await second.roundtrip()
    # the new session is the one that receives messages
    other_jid, other_pw = server.user("conf")
    other = await xmpp.connect(other_jid, other_pw)
    other.x.send_message(mto=f"{jid}/same", mbody="to-new-session", mtype="chat")
    await second.expect_message("to-new-session")
