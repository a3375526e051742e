// A chat session (server/_interaction.py): WebTransport at /chat?room=ID&token=..., one
// bidirectional stream the server opens, each message a 2-byte big-endian length and a msgpack
// map. Requests go out here; answers (history, ok, held, notice) come back on the same stream.
import { decode, encode } from "./msgpack.js";
import { webTransportOptions } from "./player.js";

export class ChatSession {
  constructor({ path, roomId, token, onMessage, onClose }) {
    this.url = new URL(path, location.origin);
    this.url.searchParams.set("room", roomId);
    this.url.searchParams.set("token", token);
    this.onMessage = onMessage;
    this.onClose = onClose;
    this.writer = null;
  }

  async open() {
    this.transport = new WebTransport(this.url.toString(), await webTransportOptions());
    await this.transport.ready;
    this.transport.closed.then((info) => this.onClose(info), (e) => this.onClose({ reason: String(e) }));
    const streams = this.transport.incomingBidirectionalStreams.getReader();
    const { value: stream, done } = await streams.read();
    if (done) throw new Error("chat: the server opened no stream");
    this.writer = stream.writable.getWriter();
    this.#readLoop(stream.readable.getReader());
  }

  async #readLoop(reader) {
    let buffer = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ done: true }));
      if (done) return;
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer); joined.set(value, buffer.length);
      buffer = joined;
      while (buffer.length >= 2) {
        const size = (buffer[0] << 8) | buffer[1];
        if (buffer.length < 2 + size) break;
        const body = buffer.slice(2, 2 + size);
        buffer = buffer.slice(2 + size);
        try { this.onMessage(decode(body)); } catch (e) { console.warn("chat:", e); }
      }
    }
  }

  async send(request) {
    if (!this.writer) throw new Error("chat: not open");
    const body = encode(request);
    const framed = new Uint8Array(2 + body.length);
    framed[0] = body.length >> 8; framed[1] = body.length & 0xff;
    framed.set(body, 2);
    await this.writer.write(framed);
  }

  close() { try { this.transport?.close(); } catch { /* already closed */ } }
}
