// Real JavaScript clients against the herald binary: xmpp.js (@xmpp/client) over
// RFC 7395 WebSocket and over TCP with STARTTLS, strophe.js over XEP-0206 BOSH.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

// Node 20 has no global WebSocket (xmpp.js uses the global one).
import { WebSocket } from "ws";
globalThis.WebSocket ??= WebSocket;
import { client, xml } from "@xmpp/client";

import { Herald, DOMAIN, PASSWORD, nextStanza, within } from "../lib/harness.mjs";

// The server's certificate is self-signed (STARTTLS on the TCP client).
process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";

let herald;

before(async () => {
  herald = await Herald.start();
  for (const u of ["alice", "bob", "carol"]) herald.addUser(u);
});

after(async () => {
  await herald?.stop();
});

function xmppjs(service, username, resource) {
  const x = client({ service, domain: DOMAIN, username, password: PASSWORD, resource });
  x.on("error", () => {}); // failures surface through start() and the awaited stanzas
  return x;
}

const bodyOf = (st) => st.getChildText("body");

test("xmpp.js over WebSocket and over TCP: login, presence, messages", async () => {
  const alice = xmppjs(herald.wsUrl, "alice", "ws");
  const bob = xmppjs(herald.tcpUrl, "bob", "tcp");
  try {
    const aliceJid = (await within(alice.start(), "WebSocket login")).toString();
    const bobJid = (await within(bob.start(), "TCP login")).toString();
    // xmpp.js binds with SASL2/Bind 2 where offered: the resource is the tag plus a suffix.
    assert.match(aliceJid, new RegExp(`^alice@${DOMAIN}/ws`));
    assert.match(bobJid, new RegExp(`^bob@${DOMAIN}/tcp`));

    const ping = await within(
      alice.iqCaller.request(xml("iq", { type: "get", to: DOMAIN }, xml("ping", "urn:xmpp:ping"))),
      "ping over WebSocket",
    );
    assert.equal(ping.attrs.type, "result");

    // Presence: alice is available and tells bob; bob answers with his.
    const bobSeesAlice = nextStanza(bob, "presence from alice", (st) => st.is("presence") && st.attrs.from === aliceJid);
    await alice.send(xml("presence"));
    await alice.send(xml("presence", { to: bobJid }, xml("status", {}, "in the browser")));
    const p1 = await bobSeesAlice;
    assert.equal(p1.getChildText("status"), "in the browser");

    const aliceSeesBob = nextStanza(alice, "presence from bob", (st) => st.is("presence") && st.attrs.from === bobJid);
    await bob.send(xml("presence", { to: aliceJid }, xml("show", {}, "away")));
    const p2 = await aliceSeesBob;
    assert.equal(p2.getChildText("show"), "away");

    // Messages both ways.
    const toAlice = nextStanza(alice, "message from bob", (st) => st.is("message") && bodyOf(st) === "hello over websocket");
    await bob.send(xml("message", { type: "chat", to: aliceJid }, xml("body", {}, "hello over websocket")));
    assert.equal((await toAlice).attrs.from, bobJid);

    const toBob = nextStanza(bob, "message from alice", (st) => st.is("message") && bodyOf(st) === "hello over tcp");
    await alice.send(xml("message", { type: "chat", to: bobJid }, xml("body", {}, "hello over tcp")));
    assert.equal((await toBob).attrs.from, aliceJid);

    // Alice leaves: bob learns it.
    const gone = nextStanza(bob, "unavailable from alice", (st) => st.is("presence") && st.attrs.from === aliceJid && st.attrs.type === "unavailable");
    await within(alice.stop(), "WebSocket logout");
    await gone;
  } finally {
    await Promise.allSettled([alice.stop(), bob.stop()]);
  }
});

test("strophe.js over BOSH: login, ping, messages with an xmpp.js WebSocket client", async () => {
  // strophe.js in Node needs an XMLHttpRequest that provides responseXML.
  const { default: XHR2 } = await import("xhr2");
  const { DOMParser } = await import("@xmldom/xmldom");
  class XHR extends XHR2 {
    get responseXML() {
      return this.responseText ? new DOMParser().parseFromString(this.responseText, "text/xml") : null;
    }
  }
  globalThis.XMLHttpRequest = XHR;
  const { Strophe, $iq, $msg, $pres } = await import("strophe.js");
  Strophe.setLogLevel(Strophe.LogLevel.WARN);

  const alice = xmppjs(herald.wsUrl, "alice", "ws2");
  const conn = new Strophe.Connection(herald.boshUrl);
  try {
    const aliceJid = (await within(alice.start(), "WebSocket login")).toString();

    const connected = new Promise((ok, fail) => {
      conn.connect(`carol@${DOMAIN}/bosh`, PASSWORD, (status, condition) => {
        if (status === Strophe.Status.CONNECTED) ok();
        else if ([Strophe.Status.CONNFAIL, Strophe.Status.AUTHFAIL, Strophe.Status.ERROR].includes(status)) {
          fail(new Error(`BOSH connection failed: status ${status} ${condition ?? ""}`));
        }
      });
    });
    await within(connected, "BOSH login");
    assert.equal(conn.jid, `carol@${DOMAIN}/bosh`);

    const pong = new Promise((ok, fail) =>
      conn.sendIQ($iq({ type: "get", to: DOMAIN }).c("ping", { xmlns: "urn:xmpp:ping" }), ok, () =>
        fail(new Error("ping failed")),
      ),
    );
    await within(pong, "ping over BOSH");

    // A message from the WebSocket client reaches the BOSH client (long polling) and the
    // answer goes back.
    const got = new Promise((ok) => {
      conn.addHandler(
        (msg) => {
          const body = msg.getElementsByTagName("body")[0];
          ok({ from: msg.getAttribute("from"), text: body ? Strophe.getText(body) : null });
          return false;
        },
        null,
        "message",
      );
    });
    conn.send($pres());
    await alice.send(xml("message", { type: "chat", to: conn.jid }, xml("body", {}, "to the BOSH client")));
    const m = await within(got, "message over BOSH");
    assert.deepEqual(m, { from: aliceJid, text: "to the BOSH client" });

    const reply = nextStanza(alice, "reply from carol", (st) => st.is("message") && bodyOf(st) === "from the BOSH client");
    conn.send($msg({ type: "chat", to: aliceJid }).c("body").t("from the BOSH client"));
    assert.equal((await reply).attrs.from, conn.jid);

    const disconnected = new Promise((ok) => {
      conn.connect_callback = (status) => {
        if (status === Strophe.Status.DISCONNECTED) ok();
      };
    });
    conn.disconnect("bye");
    await within(disconnected, "BOSH logout");
  } finally {
    await alice.stop().catch(() => {});
    conn.reset?.();
  }
});
