// Download links for files. The server signs a short-lived link for one file on request
// (`file.link`, see docs/protocol.md), so no credential of the user ever appears in a URL: not
// in an <img> src, a link's href, the browser's history or a proxy's log. Links are asked for
// when a file is shown, kept while they are good, and asked for again when they run out, when
// a download is refused (the server restarted: links are signed with a key that lives as long
// as the server process), and after every new sign-in.

import { ServerError } from "./connection.js";

/**
 * How long a link is handed out again after it came: a minute, and never within the last
 * quarter of its life. `expires` is the server's clock; the minute keeps a page whose clock is
 * behind from handing out links the server already counts as expired.
 */
const REUSE_MS = 60_000;
/** Over the server's rate limit: wait this long, a few times, before asking again. */
const RATE_LIMITED_RETRY_MS = 1000;
const RATE_LIMITED_TRIES = 3;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class FileLinks {
  /** @param {(type: string, args: object) => Promise<object>} request  sends a request */
  constructor(request) {
    this.request = request;
    this.links = new Map(); // file id -> {url, goodUntil (this page's clock)}
    this.asking = new Map(); // file id -> promise of a link, while a request is out
    this.generation = 0; // bumped by clear(): answers to older requests are not kept
  }

  /** The URL of a good link to the file if one is at hand, else null. */
  fresh(fileId) {
    const link = this.links.get(fileId);
    return link && Date.now() < link.goodUntil ? link.url : null;
  }

  /** A promise of the URL of a good link to the file: the one at hand, or a new one. */
  get(fileId) {
    const url = this.fresh(fileId);
    if (url) return Promise.resolve(url);
    let asking = this.asking.get(fileId);
    if (!asking) {
      const generation = this.generation;
      asking = this.ask(fileId).then(
        (link) => {
          if (generation === this.generation) {
            this.links.set(fileId, link);
            this.asking.delete(fileId);
          }
          return link.url;
        },
        (error) => {
          if (generation === this.generation) this.asking.delete(fileId);
          throw error;
        },
      );
      this.asking.set(fileId, asking);
    }
    return asking;
  }

  async ask(fileId) {
    for (let attempt = 1; ; attempt++) {
      try {
        const reply = await this.request("file.link", { file_id: fileId });
        const now = Date.now();
        const goodUntil = Math.min(now + REUSE_MS, reply.expires - (reply.expires - now) / 4);
        return { url: reply.url, goodUntil };
      } catch (e) {
        const limited = e instanceof ServerError && e.code === "rate_limited";
        if (!limited || attempt >= RATE_LIMITED_TRIES) throw e;
        await sleep(RATE_LIMITED_RETRY_MS * attempt);
      }
    }
  }

  /** The link to this file was refused: the next get() asks for a new one. */
  forget(fileId) {
    this.links.delete(fileId);
  }

  /** Forgets every link (a new sign-in, perhaps to a restarted server, or the end of one). */
  clear() {
    this.generation++;
    this.links.clear();
    this.asking.clear();
  }
}
