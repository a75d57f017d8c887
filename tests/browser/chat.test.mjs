// Browser test of chatd's built-in web client (web/), in a real Chromium.
//
// What it does: starts target/release/chatd on a free 127.0.0.1 port with a temporary data dir,
// opens the client in Debian's Chromium (driven by playwright-core) in two browser contexts,
// alice on a desktop-sized window and bob on a phone-sized one, and walks them through:
// register and log in, a reload that stays logged in, a group that alice creates and bob joins,
// a list of groups longer than one page of group.list (alice's group past the first page stays),
// group and direct messages, unread counts, presence and the typing indicator, file uploads (a
// file and an image) that bob sees and downloads through signed links (never a token in a URL),
// a server restart (kill -9 and start again on the same port and data dir) with the pages
// reconnecting, catching up on what was sent meanwhile and signing their file links again,
// markup in a message shown as plain text, and logging out.
//
// How to run (from the repository root):
//   cargo build --release
//   apt-get install -y chromium        # Debian's Chromium; no browser is ever downloaded
//   tests/browser/run.sh               # npm ci when needed, then this file
//
// Environment:
//   CHATD_BIN  the server binary (default: ../../target/release/chatd from this folder)
//   CHROMIUM   the browser (default: /usr/bin/chromium)
//   HEADED=1   show the windows (needs a display)
//
// Output: one line per step, then "N passed, N failed, N skipped"; the exit code is 1 when a
// step failed. Screenshots of both windows, the server's log and the browsers' console go to
// tests/browser/artifacts/ (not committed). Every wait is bounded, and the whole run stops
// itself after OVERALL_TIMEOUT_MS. Only 127.0.0.1 is contacted.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";
import { randomBytes } from "node:crypto";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const CHATD_BIN = process.env.CHATD_BIN
  ? resolve(process.env.CHATD_BIN)
  : resolve(HERE, "../../target/release/chatd");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = join(HERE, "artifacts");
const STEP_TIMEOUT_MS = 45_000;
const WAIT_MS = 15_000; // a single expectation on a page
const OVERALL_TIMEOUT_MS = 300_000;
const PASSWORD = "correct horse battery";

// ------------------------------------------------------------------------------------------
// The server
// ------------------------------------------------------------------------------------------

class Chatd {
  constructor(dataDir, logFile) {
    this.dataDir = dataDir;
    this.logFile = logFile;
    this.port = 0;
    this.proc = null;
  }

  /** Starts the server (on the port it had before, after a restart); resolves with the port. */
  async start() {
    const args = [
      "--listen",
      `127.0.0.1:${this.port}`,
      "--data-dir",
      this.dataDir,
      // One message per replay: catching up after the restart then takes several `sync`s.
      "--recovery-limit",
      "1",
      // carl makes a page of groups at once (the per-user creation rate is not under test).
      "--group-create-burst",
      "1000",
    ];
    const proc = spawn(CHATD_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    let seen = "";
    const listening = new Promise((resolveStart, reject) => {
      const timer = setTimeout(() => reject(new Error(`chatd did not start: ${seen}`)), 10_000);
      proc.once("error", reject);
      proc.once("exit", (code) => reject(new Error(`chatd exited with ${code}: ${seen}`)));
      proc.stderr.on("data", (chunk) => {
        appendFileSync(this.logFile, chunk);
        seen += chunk;
        const match = /listening on 127\.0\.0\.1:(\d+)/.exec(seen);
        if (match) {
          clearTimeout(timer);
          resolveStart(Number(match[1]));
        }
      });
    });
    proc.stdout.on("data", (chunk) => appendFileSync(this.logFile, chunk));
    this.port = await listening;
    return this.port;
  }

  /** Kills the server the hard way (as a crash would) and waits until it is gone. */
  async kill() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, "exit");
    proc.kill("SIGKILL");
    await exited;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }
}

// ------------------------------------------------------------------------------------------
// A tiny step runner: steps run in order; after a failure the rest are skipped, since each
// builds on the state the previous ones left.
// ------------------------------------------------------------------------------------------

const counts = { passed: 0, failed: 0, skipped: 0 };
let stopped = false;

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function step(name, body, timeoutMs = STEP_TIMEOUT_MS) {
  if (stopped) {
    counts.skipped++;
    console.log(`skip  ${name}`);
    return;
  }
  const started = Date.now();
  try {
    await withTimeout(body(), timeoutMs, name);
    counts.passed++;
    console.log(`ok    ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    counts.failed++;
    stopped = true;
    console.log(`FAIL  ${name} (${Date.now() - started} ms)\n${indent(error.stack ?? String(error))}`);
    await screenshots("failure").catch(() => {});
  }
}

function indent(text) {
  return text
    .split("\n")
    .map((line) => `      ${line}`)
    .join("\n");
}

// ------------------------------------------------------------------------------------------
// The browser
// ------------------------------------------------------------------------------------------

const users = {}; // name -> {context, page, dialogs, errors}

async function openUser(browser, name, contextOptions) {
  const context = await browser.newContext(contextOptions);
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  const user = { name, context, page, dialogs: [], errors: [], fileRequests: [] };
  const log = join(ARTIFACTS, `${name}-console.log`);
  page.on("dialog", (dialog) => {
    user.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on("pageerror", (error) => {
    user.errors.push(`page error: ${error.message}`);
    appendFileSync(log, `pageerror ${error.message}\n`);
  });
  page.on("request", (request) => {
    if (new URL(request.url()).pathname.startsWith("/files/")) user.fileRequests.push(request.url());
  });
  page.on("console", (message) => {
    appendFileSync(log, `${message.type()} ${message.text()}\n`);
    if (/Content.Security.Policy|Refused to/i.test(message.text())) {
      user.errors.push(`CSP: ${message.text()}`);
    }
  });
  users[name] = user;
  return user;
}

async function screenshots(label) {
  for (const { name, page } of Object.values(users)) {
    if (!page.isClosed()) {
      await page.screenshot({ path: join(ARTIFACTS, `${name}-${label}.png`), timeout: 10_000 });
    }
  }
}

/** Waits until `fn(arg)` is true in the page. */
function until(page, fn, arg, timeout = WAIT_MS) {
  return page.waitForFunction(fn, arg, { timeout, polling: 50 });
}

async function register(user, baseUrl) {
  const { page, name } = user;
  await page.goto(baseUrl);
  await page.getByTestId("auth-user").fill(name);
  await page.getByTestId("auth-password").fill(PASSWORD);
  await page.getByTestId("register-button").click();
  await page.locator("#chat-view").waitFor({ state: "visible" });
  assert.equal(await page.getByTestId("me-name").textContent(), name);
  await waitConnected(page);
}

function waitConnected(page, timeout = WAIT_MS) {
  return page
    .locator('[data-testid="connection-status"][data-state="online"]')
    .waitFor({ state: "attached", timeout });
}

/** Opens a conversation from the sidebar, through the menu button on a phone-sized window. */
async function openConversation(page, address) {
  const toggle = page.getByTestId("sidebar-toggle");
  if ((await toggle.isVisible()) && (await toggle.getAttribute("aria-expanded")) === "false") {
    await toggle.click();
  }
  await page.locator(`[data-testid="conversation-item"][data-address="${address}"]`).click();
  await until(page, (a) => document.getElementById("conversation-title").textContent === a, address);
}

async function send(page, text) {
  const input = page.getByTestId("message-input");
  await input.fill(text);
  await input.press("Enter");
  await until(page, () => document.getElementById("message-input").value === "");
}

/** Waits until the open conversation shows `text` from `from`, stored (it has a msg_id). */
function waitForMessage(page, text, from) {
  return until(
    page,
    ([text, from]) =>
      [...document.querySelectorAll('#messages [data-testid="message"]')].some(
        (li) =>
          li.dataset.msgId &&
          li.dataset.from === from &&
          li.querySelector('[data-testid="message-text"]')?.textContent === text,
      ),
    [text, from],
  );
}

/** How many messages in the open conversation read exactly `text`. */
function countMessages(page, text) {
  return page.evaluate(
    (text) =>
      [...document.querySelectorAll('#messages [data-testid="message-text"]')].filter(
        (node) => node.textContent === text,
      ).length,
    text,
  );
}

/**
 * Runs in a page: a chat socket of its own as `user` (registered on first use), which creates
 * or deletes the public groups `${prefix}000` ... and resolves with how many succeeded. A
 * `rate_limited` reply is waited out and the request sent again.
 */
async function helperSocket({ user, password, prefix, n, op }) {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  await new Promise((ok, fail) => {
    ws.onopen = ok;
    ws.onerror = () => fail(new Error("helper socket failed"));
  });
  const waiting = new Map();
  let nextId = 1;
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    waiting.get(m.re)?.(m);
    waiting.delete(m.re);
  };
  const ask = async (body) => {
    for (;;) {
      const id = nextId++;
      const reply = await new Promise((ok) => {
        waiting.set(id, ok);
        ws.send(JSON.stringify({ ...body, id }));
      });
      if (reply.code !== "rate_limited") return reply;
      await new Promise((r) => setTimeout(r, 500));
    }
  };
  if (op === "create") await ask({ type: "register", user, password });
  await ask({ type: "login", user, password });
  let done = 0;
  for (let i = 0; i < n; i++) {
    const group = `${prefix}${String(i).padStart(3, "0")}`;
    const reply = await ask(op === "create" ? { type: "group.create", group } : { type: "group.delete", group });
    if (reply.type === "ok") done++;
  }
  ws.close();
  return done;
}

function presenceOf(page, scope, user) {
  return page
    .locator(`${scope} [data-testid="presence"][data-user="${user}"]`)
    .first()
    .getAttribute("data-online");
}

// ------------------------------------------------------------------------------------------
// Test data
// ------------------------------------------------------------------------------------------

/** A width x height RGB PNG with a gradient, built by hand (signature, IHDR, IDAT, IEND). */
function makePng(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc32(body), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + width * 3); // filter byte 0, then pixels
    for (let x = 0; x < width; x++) {
      row[1 + x * 3] = Math.round((255 * x) / width);
      row[2 + x * 3] = Math.round((255 * y) / height);
      row[3 + x * 3] = 160;
    }
    rows.push(row);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(Buffer.concat(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

// ------------------------------------------------------------------------------------------
// The scenario
// ------------------------------------------------------------------------------------------

async function main() {
  rmSync(ARTIFACTS, { recursive: true, force: true });
  mkdirSync(ARTIFACTS, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), "chatd-browser-"));
  const server = new Chatd(dataDir, join(ARTIFACTS, "chatd.log"));
  let browser = null;
  const watchdog = setTimeout(() => {
    console.log(`FAIL  the whole run took over ${OVERALL_TIMEOUT_MS} ms; stopping`);
    server.kill().finally(() => process.exit(2));
  }, OVERALL_TIMEOUT_MS);

  try {
    await step("chatd starts and serves the client with its Content-Security-Policy", async () => {
      await server.start();
      const response = await fetch(`${server.url}/`);
      assert.equal(response.status, 200);
      const csp = response.headers.get("content-security-policy") ?? "";
      assert.match(csp, /script-src 'self'/);
      assert.doesNotMatch(csp, /unsafe-inline/);
      for (const asset of ["/app.js", "/connection.js", "/model.js", "/upload.js", "/style.css"]) {
        assert.equal((await fetch(`${server.url}${asset}`)).status, 200, asset);
      }
    });

    await step("Chromium starts with two browser contexts", async () => {
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        headless: !process.env.HEADED,
        args: [
          ...(process.env.HEADED ? [] : ["--headless"]),
          "--no-sandbox",
          "--disable-gpu",
          "--disable-quic",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
        ],
        timeout: 30_000,
      });
      await openUser(browser, "alice", { viewport: { width: 1280, height: 800 } });
      await openUser(browser, "bob", {
        viewport: { width: 390, height: 800 },
        deviceScaleFactor: 2,
        isMobile: true,
        hasTouch: true,
      });
    });

    const { alice, bob } = users;

    await step("alice and bob register and are logged in", async () => {
      await register(alice, server.url);
      await register(bob, server.url);
    });

    await step("a reload stays logged in (token in localStorage)", async () => {
      await alice.page.reload();
      await alice.page.locator("#chat-view").waitFor({ state: "visible" });
      assert.equal(await alice.page.locator("#auth-view").isVisible(), false);
      await waitConnected(alice.page);
    });

    await step("alice creates a public group and bob joins it", async () => {
      await alice.page.getByTestId("new-group-name").fill("team");
      await alice.page.getByTestId("create-group").click();
      await until(alice.page, () => document.getElementById("conversation-title").textContent === "#team");

      // bob's list of groups to join was fetched before #team existed: refresh it.
      await bob.page.getByTestId("refresh-groups").click();
      const join = bob.page.locator('[data-testid="joinable-group"][data-group="team"] [data-testid="join-button"]');
      await join.click();
      await until(bob.page, () => document.getElementById("conversation-title").textContent === "#team");
      // alice sees bob arrive in the member list.
      await alice.page.locator('[data-testid="member"][data-user="bob"]').waitFor();
    });

    await step("group messages go both ways", async () => {
      await send(alice.page, "hello team");
      await waitForMessage(bob.page, "hello team", "alice");
      await send(bob.page, "hi alice, bob here");
      await waitForMessage(alice.page, "hi alice, bob here", "bob");
      assert.equal(await countMessages(alice.page, "hello team"), 1);
      // Own messages are marked as such.
      const own = await alice.page.locator('#messages [data-testid="message"].own').count();
      assert.equal(own, 1);
    });

    await step("the list of groups comes a page at a time, and a group past the first page stays", async () => {
      // carl, on a socket of his own opened from alice's page, creates 100 public groups whose
      // names sort before #team, so that alice's #team is on the second page of group.list.
      const created = await alice.page.evaluate(helperSocket, { user: "carl", password: PASSWORD, prefix: "aa", n: 100, op: "create" });
      assert.equal(created, 100);
      await alice.page.getByTestId("refresh-groups").click();
      await alice.page.locator('[data-testid="joinable-group"][data-group="aa099"]').waitFor({ state: "attached" });
      // Read in one page, #team would be gone from alice's groups by now.
      assert.equal(await alice.page.locator('#group-list [data-address="#team"]').count(), 1);
      const deleted = await alice.page.evaluate(helperSocket, { user: "carl", password: PASSWORD, prefix: "aa", n: 100, op: "delete" });
      assert.equal(deleted, 100);
      await alice.page.getByTestId("refresh-groups").click();
      await alice.page.locator('[data-testid="joinable-group"][data-group="aa000"]').waitFor({ state: "detached" });
    });

    await step("bob sees alice online in the member list", async () => {
      await bob.page.getByTestId("members-toggle").click();
      const dot = bob.page.locator('#member-list [data-user="alice"] [data-testid="presence"]');
      await dot.waitFor({ state: "visible" });
      await until(
        bob.page,
        () => document.querySelector('#member-list [data-user="alice"] [data-testid="presence"]')?.dataset.online === "true",
      );
      await bob.page.getByTestId("members-toggle").click(); // close it again on the small screen
    });

    await step("bob sees alice typing, and it goes away", async () => {
      await alice.page.getByTestId("message-input").pressSequentially("still wri", { delay: 30 });
      await until(bob.page, () => document.getElementById("typing-indicator").textContent === "alice is typing…");
      await alice.page.getByTestId("message-input").fill("");
      await until(bob.page, () => document.getElementById("typing-indicator").textContent === "", null, 10_000);
    });

    await step("direct messages, with an unread count and presence in the sidebar", async () => {
      await bob.page.getByTestId("sidebar-toggle").click();
      await bob.page.getByTestId("sidebar").waitFor({ state: "visible" });
      await bob.page.screenshot({ path: join(ARTIFACTS, "bob-sidebar.png"), animations: "disabled" });
      await bob.page.getByTestId("direct-user").fill("alice");
      await bob.page.getByTestId("direct-start").click();
      await until(bob.page, () => document.getElementById("conversation-title").textContent === "@alice");
      await send(bob.page, "psst, alice: a direct one");

      const item = alice.page.locator('[data-testid="conversation-item"][data-address="@bob"]');
      await item.locator('[data-testid="unread-badge"][data-count="1"]').waitFor();
      assert.equal(await presenceOf(alice.page, "#direct-list", "bob"), "true");
      await item.click();
      await waitForMessage(alice.page, "psst, alice: a direct one", "bob");
      assert.equal(await item.locator('[data-testid="unread-badge"]').count(), 0);
      await send(alice.page, "hi bob, directly");
      await waitForMessage(bob.page, "hi bob, directly", "alice");
      assert.equal(await presenceOf(bob.page, "#direct-list", "alice"), "true");
    });

    const markup = "<img src=x onerror=alert(1)>";

    await step("markup in a message is shown as text and never runs", async () => {
      await openConversation(alice.page, "#team");
      await openConversation(bob.page, "#team");
      await send(alice.page, markup);
      await waitForMessage(bob.page, markup, "alice");
      await waitForMessage(alice.page, markup, "alice");
      await bob.page.waitForTimeout(300); // time for an onerror to fire, if an img had been made
      for (const { page } of [alice, bob]) {
        assert.equal(await page.locator("#messages img").count(), 0, "no img element in messages");
        const text = await page.locator('#messages [data-testid="message-text"]').last().textContent();
        assert.equal(text, markup);
      }
      assert.deepEqual(alice.dialogs, []);
      assert.deepEqual(bob.dialogs, []);
    });

    const fileBytes = randomBytes(200 * 1024 + 123); // several 64 KiB chunks
    let hrefBeforeRestart = null;
    const png = makePng(48, 32);

    await step("alice uploads a file and an image; bob sees them and downloads the file", async () => {
      // Note when the progress bar shows (a local upload is over in a blink).
      await alice.page.evaluate(() => {
        const status = document.getElementById("upload-status");
        window.uploadProgressSeen = false;
        new MutationObserver(() => {
          if (!status.hidden) window.uploadProgressSeen = true;
        }).observe(status, { attributes: true });
      });
      await alice.page.getByTestId("file-input").setInputFiles({
        name: "notes.bin",
        mimeType: "application/octet-stream",
        buffer: fileBytes,
      });
      const ownLink = alice.page.locator('#messages [data-testid="message"][data-msg-id] [data-testid="file-link"]', {
        hasText: "notes.bin",
      });
      await ownLink.waitFor();
      assert.equal(await alice.page.evaluate(() => window.uploadProgressSeen), true, "progress bar shown");

      // An empty file is a complete upload at once.
      await alice.page.getByTestId("file-input").setInputFiles({ name: "empty.txt", mimeType: "text/plain", buffer: Buffer.alloc(0) });
      await alice.page
        .locator('#messages [data-testid="message"][data-msg-id] [data-testid="file-link"]', { hasText: "empty.txt" })
        .waitFor();

      await alice.page.getByTestId("file-input").setInputFiles({ name: "pixels.png", mimeType: "image/png", buffer: png });
      await until(alice.page, () =>
        [...document.querySelectorAll('#messages [data-testid="message-image"]')].some((img) => img.naturalWidth === 48),
      );

      // bob: a download link for the file, the image inline.
      const link = bob.page.locator('#messages [data-testid="file-link"]', { hasText: "notes.bin" });
      await link.waitFor();
      await until(bob.page, () =>
        [...document.querySelectorAll('#messages [data-testid="message-image"]')].some(
          (img) => img.complete && img.naturalWidth === 48 && img.naturalHeight === 32,
        ),
      );
      // The link is signed for this one file; no token of bob's is in it.
      await bob.page.locator('#messages [data-testid="file-link"][href]', { hasText: "notes.bin" }).waitFor();
      const href = await link.getAttribute("href");
      assert.match(href, /^\/files\/[A-Za-z0-9_-]{22}\?u=\d+&exp=\d+&sig=[A-Za-z0-9_-]{43}$/);
      hrefBeforeRestart = href;
      const downloaded = await bob.page.evaluate(async (href) => {
        const response = await fetch(href);
        const bytes = new Uint8Array(await response.arrayBuffer());
        let binary = "";
        for (const b of bytes) binary += String.fromCharCode(b);
        return { status: response.status, base64: btoa(binary) };
      }, href);
      assert.equal(downloaded.status, 200);
      assert.ok(Buffer.from(downloaded.base64, "base64").equals(fileBytes), "downloaded bytes match");

      // The only images in the messages are the uploaded ones.
      const sources = await bob.page.locator("#messages img").evaluateAll((imgs) => imgs.map((i) => i.getAttribute("src")));
      assert.equal(sources.length, 1);
      assert.match(sources[0], /^\/files\/[A-Za-z0-9_-]{22}\?u=\d+&exp=\d+&sig=/);
    });

    await step("after a server restart both pages reconnect and bob catches up", async () => {
      await server.kill();
      for (const { page } of [alice, bob]) {
        await page.locator('[data-testid="connection-status"][data-state="offline"]').waitFor({ state: "attached" });
        await page.getByTestId("offline-banner").waitFor({ state: "visible" });
      }
      // Keep bob away until alice has sent everything, so that he gets it by recovery.
      await bob.context.setOffline(true);

      // Written while the server is down: waits in alice's outbox.
      await send(alice.page, "written while the server was down");
      await alice.page.locator('#messages [data-testid="message"].pending').waitFor(); // waits, unsent

      await server.start(); // same port, same data dir
      await waitConnected(alice.page, 30_000);
      await waitForMessage(alice.page, "written while the server was down", "alice");
      await send(alice.page, "sent after the restart");
      await waitForMessage(alice.page, "sent after the restart", "alice");

      assert.notEqual(
        await bob.page.getByTestId("connection-status").getAttribute("data-state"),
        "online",
        "bob stayed away while alice sent",
      );
      await bob.context.setOffline(false);
      await waitConnected(bob.page, 30_000);
      await waitForMessage(bob.page, "written while the server was down", "alice");
      await waitForMessage(bob.page, "sent after the restart", "alice");
      for (const { page } of [alice, bob]) {
        assert.equal(await countMessages(page, "written while the server was down"), 1);
        assert.equal(await countMessages(page, "sent after the restart"), 1);
        assert.equal(await countMessages(page, "hello team"), 1);
      }
      await screenshots("after-restart");
    }, 90_000);

    await step("after the restart, file links are signed again and still download", async () => {
      // The restarted server signs with a new key: the old link is refused, the page has a new one.
      const old = await bob.page.evaluate(async (href) => (await fetch(href)).status, hrefBeforeRestart);
      assert.equal(old, 401, "a link from before the restart");
      const link = bob.page.locator('#messages [data-testid="file-link"]', { hasText: "notes.bin" });
      await until(
        bob.page,
        (before) =>
          [...document.querySelectorAll('#messages [data-testid="file-link"]')].some(
            (a) => a.textContent === "notes.bin" && a.getAttribute("href") && a.getAttribute("href") !== before,
          ),
        hrefBeforeRestart,
      );
      const status = await bob.page.evaluate(async (href) => (await fetch(href)).status, await link.getAttribute("href"));
      assert.equal(status, 200);
      // A click on a link gone stale gets a fresh one first, then downloads.
      await link.evaluate((a, old) => a.setAttribute("href", old), hrefBeforeRestart);
      const [download] = await Promise.all([bob.page.waitForEvent("download"), link.click()]);
      assert.equal(await download.failure(), null);
      assert.equal(download.suggestedFilename(), "notes.bin");
      const { pathname, search } = new URL(download.url());
      assert.notEqual(pathname + search, hrefBeforeRestart);
      assert.ok(readFileSync(await download.path()).equals(fileBytes), "downloaded bytes match");
    });

    await step("older messages load when scrolling back", async () => {
      // 60 more messages: more than one history page (50) after a reload.
      for (let i = 1; i <= 60; i++) {
        await alice.page.getByTestId("message-input").fill(`filler ${i}`);
        await alice.page.getByTestId("message-input").press("Enter");
      }
      await waitForMessage(alice.page, "filler 60", "alice");
      await bob.page.reload();
      await waitConnected(bob.page);
      await openConversation(bob.page, "#team");
      await waitForMessage(bob.page, "filler 60", "alice");
      assert.equal(await countMessages(bob.page, "hello team"), 0, "only the latest page at first");
      await bob.page.getByTestId("load-older").waitFor({ state: "visible" });
      await bob.page.getByTestId("message-scroller").evaluate((s) => {
        s.scrollTop = 0;
      });
      await waitForMessage(bob.page, "hello team", "alice");
      await bob.page.locator("#history-start").waitFor({ state: "visible" });
      // Everything is there once, in order.
      const ids = await bob.page
        .locator('#messages [data-testid="message"]')
        .evaluateAll((nodes) => nodes.map((n) => Number(n.dataset.msgId)));
      assert.deepEqual(ids, [...ids].sort((a, b) => a - b));
      assert.equal(new Set(ids).size, ids.length);
    }, 60_000);

    await step("an error reply is shown with the server's message", async () => {
      await alice.page.getByTestId("new-group-name").fill("team");
      await alice.page.getByTestId("create-group").click();
      const toast = alice.page.getByTestId("toast").filter({ hasText: "Could not create #team" });
      await toast.waitFor();
    });

    await step("alice logs out: bob sees her go offline, and a reload stays logged out", async () => {
      await screenshots("final");
      await alice.page.getByTestId("logout-button").click();
      await alice.page.locator("#auth-view").waitFor({ state: "visible" });
      await until(
        bob.page,
        () => document.querySelector('#member-list [data-user="alice"] [data-testid="presence"]')?.dataset.online === "false",
      );
      await alice.page.reload();
      await alice.page.locator("#auth-view").waitFor({ state: "visible" });
      assert.equal(await alice.page.locator("#chat-view").isVisible(), false);
      await alice.page.screenshot({ path: join(ARTIFACTS, "alice-login.png") });
      // Logging in again with Enter in the password field.
      await alice.page.getByTestId("auth-user").fill("alice");
      await alice.page.getByTestId("auth-password").fill(PASSWORD);
      await alice.page.getByTestId("auth-password").press("Enter");
      await waitConnected(alice.page);
    });

    await step("a token the server no longer accepts leads back to the login form", async () => {
      await bob.page.evaluate(() => {
        const session = JSON.parse(localStorage.getItem("chatd.session"));
        session.token = "A".repeat(43);
        localStorage.setItem("chatd.session", JSON.stringify(session));
      });
      await bob.page.reload();
      await bob.page.locator("#auth-view").waitFor({ state: "visible" });
      const message = await bob.page.getByTestId("auth-error").textContent();
      assert.match(message, /session has ended/);
    });

    await step("no script errors, CSP violations or dialogs in either page", async () => {
      for (const user of [alice, bob]) {
        assert.deepEqual(user.errors, [], `${user.name}: errors`);
        assert.deepEqual(user.dialogs, [], `${user.name}: dialogs`);
      }
    });

    await step("no file was ever asked for with a token in its URL", async () => {
      for (const user of [alice, bob]) {
        assert.ok(user.fileRequests.length > 0, `${user.name} downloaded files`);
        for (const url of user.fileRequests) {
          assert.doesNotMatch(url, /[?&]token=/, `${user.name}: ${url}`);
          assert.match(url, /\?u=\d+&exp=\d+&sig=/, `${user.name}: ${url}`);
        }
      }
    });

    if (!stopped) await screenshots("end").catch(() => {});
  } finally {
    clearTimeout(watchdog);
    await browser?.close().catch(() => {});
    await server.kill().catch(() => {});
    rmSync(dataDir, { recursive: true, force: true });
  }

  console.log(`${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped`);
  process.exitCode = counts.failed > 0 ? 1 : 0;
}

await main();
