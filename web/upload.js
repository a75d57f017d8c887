// Sending one file: `file.upload`, then the bytes as binary messages, then the server's
// `file.done` event once the file and its message are stored.
//
// How an upload ends (docs/protocol.md, "file.upload"):
//   - success: a `file.done` event {file_id, msg_id, ts} (the uploader gets no `message` event);
//   - failure after the `ok`: an `error` with the upload's `file_id` and no `re`, since the
//     request already had its one reply (too many bytes, disk trouble, the commit failed, the
//     user left the group); the app passes it to handleLateReply();
//   - the socket closes: the upload is lost (the server drops the partial file) and has to be
//     started again; the app calls handleDisconnect().

import { ConnectionLost, ServerError } from "./connection.js";

/** Bytes per binary message; well under the server's --max-message-size (1 MiB by default). */
export const CHUNK_SIZE = 64 * 1024;
/** How much the browser may hold unsent before we wait; keeps memory flat and progress honest. */
const HIGH_WATER = 4 * CHUNK_SIZE;
const DRAIN_POLL_MS = 15;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The user cancelled the upload. */
export class UploadCancelled extends Error {
  constructor() {
    super("upload cancelled");
    this.name = "UploadCancelled";
  }
}

export class Upload {
  /**
   * @param {Connection} conn
   * @param {string} to  the conversation address
   * @param {File} file
   * @param {(fraction: number) => void} onProgress
   */
  constructor(conn, to, file, onProgress) {
    this.conn = conn;
    this.to = to;
    this.file = file;
    this.onProgress = onProgress;
    this.requestId = null;
    this.fileId = null;
    this.earlyDone = null; // a file.done that came before the ok (see handleDone)
    this.cancelled = false;
    this.finished = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.finished.catch(() => {}); // run() reports the failure
  }

  /**
   * Resolves with the `file.done` event; rejects with ServerError, ConnectionLost or
   * UploadCancelled.
   */
  async run() {
    const { file, conn } = this;
    const args = { to: this.to, name: file.name, size: file.size };
    if (file.type) args.mime = file.type;
    const { id, reply } = conn.start("file.upload", args);
    this.requestId = id;
    this.fileId = (await reply).file_id;
    if (this.earlyDone) this.handleDone(this.earlyDone);
    if (this.cancelled) {
      // cancel() came while we waited for the ok, so it could not tell the server yet.
      conn.request("file.cancel").catch(() => {});
      throw new UploadCancelled();
    }

    let sent = 0;
    while (sent < file.size) {
      if (this.cancelled) throw new UploadCancelled();
      while (conn.bufferedAmount > HIGH_WATER) {
        if (!conn.isOpen) throw new ConnectionLost();
        this.reportProgress(sent);
        await sleep(DRAIN_POLL_MS);
      }
      const chunk = await file.slice(sent, sent + CHUNK_SIZE).arrayBuffer();
      conn.sendBinary(chunk);
      sent += chunk.byteLength;
      this.reportProgress(sent);
    }
    // Let the progress bar reach the end as the last bytes leave.
    while (conn.bufferedAmount > 0 && conn.isOpen) {
      this.reportProgress(sent);
      await sleep(DRAIN_POLL_MS);
    }
    this.onProgress(1);
    return this.finished;
  }

  /** Stops sending and tells the server to drop what it has. */
  cancel() {
    this.cancelled = true;
    if (this.fileId !== null && this.conn.isOpen) {
      this.conn.request("file.cancel").catch(() => {});
    }
    this.rejectDone(new UploadCancelled());
  }

  /** The app passes every `file.done` event here; true when it was ours. */
  handleDone(event) {
    if (this.fileId === null) {
      // The ok has not been read yet (the server sends it first, but this handler may run
      // before the awaited reply resolves): keep the event until the ok has come.
      this.earlyDone = event;
      return true;
    }
    if (event.file_id !== this.fileId) return false;
    this.resolveDone(event);
    return true;
  }

  /** The app passes an error nobody was waiting for here; true when it ended this upload. */
  handleLateReply(reply) {
    // The file.upload request already had its ok: a later failure names the upload by file_id.
    if (reply.type !== "error" || reply.file_id === undefined || reply.file_id !== this.fileId) return false;
    this.rejectDone(new ServerError(reply.code, reply.message));
    return true;
  }

  reportProgress(sent) {
    const size = this.file.size || 1;
    const left = Math.min(this.conn.bufferedAmount, sent);
    this.onProgress((sent - left) / size);
  }

  /** The app calls this when the socket closes. */
  handleDisconnect() {
    this.rejectDone(new ConnectionLost());
  }
}
