"""Process lifecycle: graceful shutdown on SIGTERM."""

import asyncio
import signal


async def test_sigterm_disconnects_clients_and_exits_zero(make_server, xmpp):
    srv = make_server()
    jid, pw = srv.user("term")
    c = await xmpp.connect(jid, pw, server=srv)
    comp, result = await xmpp.component(server=srv)
    assert result == "session"
    srv.signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.shield(c.disconnected), 5)
    assert "system-shutdown" in c.stream_errors, f"client saw {c.stream_errors}"
    await asyncio.wait_for(asyncio.shield(comp.disconnected), 5)
    assert "system-shutdown" in comp.stream_errors, f"component saw {comp.stream_errors}"
    rc = await asyncio.get_running_loop().run_in_executor(None, srv.wait_exit, 5)
    assert rc == 0, f"exit status {rc} (None = still running after 5 s)"


async def test_sigterm_idle_server_exits_fast(make_server):
    srv = make_server()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    srv.signal(signal.SIGTERM)
    rc = await loop.run_in_executor(None, srv.wait_exit, 5)
    assert rc == 0, f"exit status {rc}"
    assert loop.time() - t0 < 3, "idle shutdown took too long"
