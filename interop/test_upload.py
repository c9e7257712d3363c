"""XEP-0363 HTTP File Upload and XEP-0065 SOCKS5 bytestreams through the server's proxy,
driven by slixmpp's own plugins (xep_0363 uploads with aiohttp; xep_0065 negotiates,
connects both clients to the proxy and activates)."""

import asyncio
import io
import os
import subprocess

import aiohttp
import pytest

from conftest import HERALD_BIN, WAIT, IqFailed

UPLOAD = "upload.example.test"
PROXY = "proxy.example.test"


@pytest.fixture
def upload_server(make_server):
    """A server whose upload links point at its plain-HTTP listener (as behind a
    TLS-terminating reverse proxy), so aiohttp needs no certificate for the test."""
    srv = make_server(start=False)
    with open(srv.config, "a") as f:
        f.write(f'\n[http]\npublic_url = "http://{srv.host}:{srv.http_port}"\n')
    srv.start()
    return srv


def herald_files(srv, *args) -> str:
    r = subprocess.run(
        [HERALD_BIN, "-c", str(srv.config), "files", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


async def test_upload_a_file_and_download_it(upload_server, xmpp):
    srv = upload_server
    jid, pw = srv.user("up")
    c = await xmpp.connect(jid, pw, server=srv, plugins=["xep_0030", "xep_0363"])
    data = os.urandom(300_000)
    url = await c.x.plugin["xep_0363"].upload_file(
        "quarterly report.pdf",
        size=len(data),
        content_type="application/pdf",
        input_file=io.BytesIO(data),
        timeout=WAIT,
    )
    assert str(c.x.plugin["xep_0363"].upload_service) == UPLOAD
    assert c.x.plugin["xep_0363"].max_file_size == 100 * 1024 * 1024
    assert url.startswith(f"http://{srv.host}:{srv.http_port}/upload/"), url
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/pdf"
            assert await r.read() == data
        async with s.get(url, headers={"Range": "bytes=10-19"}) as r:
            assert r.status == 206
            assert await r.read() == data[10:20]

    # The transfer is in the audit log, and purging it ends the link.
    out = herald_files(srv, "list", "--user", jid)
    assert "quarterly report.pdf" in out and "uploaded" in out, out
    file_id = out.splitlines()[1].split()[0]
    shown = herald_files(srv, "show", file_id)
    assert "downloads:     2" in shown, shown
    herald_files(srv, "purge", file_id)
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 404


async def test_upload_too_large_is_refused_with_the_limit(make_server, xmpp):
    srv = make_server('[upload]\nmax_file_size = 1000\nquota_daily_bytes = 0\n'
                      'quota_total_bytes = 0\n')
    jid, pw = srv.user("up")
    c = await xmpp.connect(jid, pw, server=srv, plugins=["xep_0030", "xep_0363"])
    with pytest.raises(IqFailed) as failed:
        await c.iq("get", UPLOAD,
                   "<request xmlns='urn:xmpp:http:upload:0' filename='a.bin' size='5000'/>")
    assert failed.value.condition == "not-acceptable"
    err = failed.value.iq.xml.find("{jabber:client}error")
    assert err.get("type") == "modify"
    limit = err.find("{urn:xmpp:http:upload:0}file-too-large/{urn:xmpp:http:upload:0}max-file-size")
    assert limit is not None and limit.text == "1000"


async def test_two_clients_transfer_through_the_proxy(server, xmpp):
    (a_jid, a_pw), (b_jid, b_pw) = server.user("s5a"), server.user("s5b")
    a = await xmpp.connect(a_jid, a_pw, resource="send", plugins=["xep_0030", "xep_0065"])
    b = await xmpp.connect(b_jid, b_pw, resource="recv", plugins=["xep_0030", "xep_0065"])
    b.x.plugin["xep_0065"].auto_accept = True

    payload = os.urandom(500_000)
    received = bytearray()
    done = asyncio.get_running_loop().create_future()

    def on_data(data):
        received.extend(data)
        if len(received) >= len(payload) and not done.done():
            done.set_result(None)

    b.x.add_event_handler("socks5_data", on_data)

    proxies = await a.x.plugin["xep_0065"].discover_proxies(timeout=WAIT)
    assert PROXY in {str(j) for j in proxies}, proxies
    host, port = proxies[next(j for j in proxies if str(j) == PROXY)]
    assert (host, int(port)) == (server.host, server.proxy65_port)

    sock = await a.x.plugin["xep_0065"].handshake(f"{b_jid}/recv", timeout=WAIT)
    assert sock is not None, "no bytestream"
    await sock.write(payload)
    await asyncio.wait_for(done, 10)
    assert bytes(received) == payload
