// Starts the real herald binary for the Node interop tests: a temporary data directory and
// configuration on free loopback ports, accounts made with `herald user add`, and a bounded
// wait until the HTTP service answers /health.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const DOMAIN = "example.test";
export const HOST = "127.0.0.1";
export const PASSWORD = "correct horse battery staple";
/** Upper bound for any single awaited event, in milliseconds. */
export const WAIT = 10_000;

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.HERALD_BIN ?? resolve(here, "../../../target/debug/herald");

/** `n` distinct free ports: every listener stays open until all have a port, since a
 * port released at once could come back from the next listen on port 0. */
async function freePorts(n) {
  const opened = await Promise.allSettled(
    Array.from(
      { length: n },
      () =>
        new Promise((ok, fail) => {
          const s = createServer();
          s.once("error", fail);
          s.listen(0, HOST, () => ok(s));
        }),
    ),
  );
  const held = opened.filter((r) => r.status === "fulfilled").map((r) => r.value);
  const ports = held.map((s) => s.address().port);
  await Promise.all(held.map((s) => new Promise((ok) => s.close(ok))));
  const failed = opened.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
  return ports;
}

export class Herald {
  static async start() {
    const h = new Herald();
    await h.#start();
    return h;
  }

  /** A port taken by another connection between `freePorts` and the server's bind makes
   * the server exit with "cannot listen"; that is retried on fresh ports. */
  async #start() {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#startOnce();
      } catch (e) {
        if (attempt === 3 || !String(e.message).includes("cannot listen on")) throw e;
        rmSync(this.dir, { recursive: true, force: true });
      }
    }
  }

  async #startOnce() {
    this.dir = mkdtempSync(join(tmpdir(), "herald-node-"));
    const [c2s, tls, http, https, comp, p65] = await freePorts(6);
    Object.assign(this, { c2s, http, https });
    this.config = join(this.dir, "herald.toml");
    const pg = process.env.HERALD_TEST_STORAGE === "postgres";
    if (pg) throw new Error("the Node interop tier runs on SQLite only");
    writeFileSync(
      this.config,
      `[server]
domains = ["${DOMAIN}"]
data_dir = "${join(this.dir, "data")}"
shutdown_grace_secs = 2

[listen]
c2s = ["${HOST}:${c2s}"]
c2s_direct_tls = ["${HOST}:${tls}"]
http = ["${HOST}:${http}"]
https = ["${HOST}:${https}"]
component = ["${HOST}:${comp}"]
proxy65 = ["${HOST}:${p65}"]

[auth]
# every client connects from 127.0.0.1: keep the per-IP failure throttle out of the way
max_failures = 1000
`,
    );
    this.log = join(this.dir, "herald.log");
    const out = openSync(this.log, "a");
    this.proc = spawn(BIN, ["-c", this.config, "serve"], {
      stdio: ["ignore", out, out],
      env: { ...process.env, NO_COLOR: "1" },
    });
    closeSync(out); // the child has its own copy
    this.exited = new Promise((ok) => this.proc.once("exit", ok));
    const deadline = Date.now() + 30_000;
    for (;;) {
      try {
        const r = await fetch(`http://${HOST}:${http}/health`);
        if (r.ok) break;
      } catch {
        // not listening yet
      }
      if (this.proc.exitCode !== null || Date.now() > deadline) {
        throw new Error(`herald did not start:\n${readFileSync(this.log, "utf8")}`);
      }
      await new Promise((ok) => setTimeout(ok, 100));
    }
  }

  addUser(user) {
    execFileSync(BIN, ["-c", this.config, "user", "add", `${user}@${DOMAIN}`, "--password", PASSWORD], {
      stdio: ["ignore", "ignore", "pipe"],
    });
  }

  get wsUrl() {
    return `ws://${HOST}:${this.http}/xmpp-websocket`;
  }

  get boshUrl() {
    return `http://${HOST}:${this.http}/http-bind`;
  }

  get tcpUrl() {
    return `xmpp://${HOST}:${this.c2s}`;
  }

  async stop() {
    if (this.proc && this.proc.exitCode === null) {
      this.proc.kill("SIGTERM");
      const killed = setTimeout(() => this.proc.kill("SIGKILL"), 10_000);
      await this.exited;
      clearTimeout(killed);
    }
    if (process.env.HERALD_KEEP_LOGS) {
      console.log(readFileSync(this.log, "utf8"));
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Resolves with the first stanza `pred` accepts on an @xmpp/client connection. */
export function nextStanza(xmpp, what, pred) {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => {
      xmpp.removeListener("stanza", on);
      fail(new Error(`no ${what} within ${WAIT} ms`));
    }, WAIT);
    function on(st) {
      if (pred(st)) {
        clearTimeout(timer);
        xmpp.removeListener("stanza", on);
        ok(st);
      }
    }
    xmpp.on("stanza", on);
  });
}

/** Bounds a promise in time. */
export function within(promise, what, ms = WAIT) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, fail) => {
      timer = setTimeout(() => fail(new Error(`${what} took more than ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
