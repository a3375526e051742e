// moq-lite draft-02 over WebTransport, the subset a browser publisher needs: the
// compatibility SETUP, answering the relay's ANNOUNCE_PLEASE and SUBSCRIBE, one
// unidirectional stream per group; and subscribing to the relay's own tracks (chat).
// Wire layout as docs/moq-lite.md describes it (and shopcast.server.moq implements).

export const LITE_DRAFT_02 = 0xff0dad02;
const CLIENT_COMPAT = 0x20;
const SERVER_COMPAT = 0x21;
const STREAM_ANNOUNCE = 0x01;
const STREAM_SUBSCRIBE = 0x02;
const UNI_GROUP = 0x00;
const PARAM_IMPLEMENTATION = 7;
const ERROR_NOT_FOUND = 13;
const ANNOUNCE_ENDED = 0;
const ANNOUNCE_ACTIVE = 1;

// --- encoding --------------------------------------------------------------------------------

/** A QUIC variable-length integer (RFC 9000 §16) in its shortest form; values up to 2^53. */
export function encodeVarint(value) {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`varint out of range: ${value}`);
  if (value < 0x40) return Uint8Array.of(value);
  if (value < 0x4000) return Uint8Array.of(0x40 | (value >> 8), value & 0xff);
  if (value < 0x40000000) {
    return Uint8Array.of(0x80 | (value >>> 24), (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff);
  }
  const out = new Uint8Array(8);
  const view = new DataView(out.buffer);
  view.setUint32(0, Math.floor(value / 2 ** 32) | 0xc0000000);
  view.setUint32(4, value >>> 0);
  return out;
}

export function concat(parts) {
  const size = parts.reduce((n, p) => n + p.byteLength, 0);
  const out = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    out.set(part instanceof Uint8Array ? part : new Uint8Array(part), at);
    at += part.byteLength;
  }
  return out;
}

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

function encodeString(text) {
  const bytes = utf8.encode(text);
  return concat([encodeVarint(bytes.length), bytes]);
}

/** A moq-lite message: varint length, then the body. */
function message(...fields) {
  const body = concat(fields);
  return concat([encodeVarint(body.length), body]);
}

/** A hang frame (container "legacy"): varint timestamp in µs, then the codec payload. */
export function hangFrame(timestampUs, payload) {
  return concat([encodeVarint(Math.max(0, Math.round(timestampUs))), payload]);
}

/** Split a hang frame into [timestampUs, payload]. */
export function decodeHangFrame(frame) {
  const cursor = new Cursor(frame);
  const timestampUs = cursor.varint();
  return [timestampUs, frame.subarray(cursor.at)];
}

// --- decoding --------------------------------------------------------------------------------

class Cursor {
  constructor(bytes) { this.bytes = bytes; this.at = 0; }
  u8() {
    if (this.at >= this.bytes.length) throw new Error("truncated message");
    return this.bytes[this.at++];
  }
  varint() {
    const first = this.u8();
    const size = 1 << (first >> 6);
    let value = first & 0x3f;
    for (let i = 1; i < size; i++) value = value * 256 + this.u8();
    return value;
  }
  raw(size) {
    if (this.at + size > this.bytes.length) throw new Error("truncated message");
    const out = this.bytes.subarray(this.at, this.at + size);
    this.at += size;
    return out;
  }
  string() { return fromUtf8.decode(this.raw(this.varint())); }
}

/** Reads varints and sized bodies off a WebTransport receive stream. */
class StreamReader {
  constructor(readable) {
    this.reader = readable.getReader();
    this.buffer = new Uint8Array(0);
  }
  async fill(size) {
    while (this.buffer.length < size) {
      const { value, done } = await this.reader.read();
      if (done) return false;
      this.buffer = this.buffer.length ? concat([this.buffer, value]) : value;
    }
    return true;
  }
  take(size) {
    const out = this.buffer.subarray(0, size);
    this.buffer = this.buffer.subarray(size);
    return out;
  }
  /** The next varint, or undefined at a clean end of stream. */
  async varint() {
    if (!(await this.fill(1))) return undefined;
    const size = 1 << (this.buffer[0] >> 6);
    if (!(await this.fill(size))) throw new Error("stream ended inside a varint");
    return new Cursor(this.take(size)).varint();
  }
  async bytes(size) {
    if (!(await this.fill(size))) throw new Error("stream ended early");
    return this.take(size);
  }
  /** A varint-length message body, or undefined at a clean end of stream. */
  async message() {
    const size = await this.varint();
    return size === undefined ? undefined : this.bytes(size);
  }
  cancel() { this.reader.cancel().catch(() => {}); }
}

// --- publishing ------------------------------------------------------------------------------

/** One group being written to one subscriber: a unidirectional stream, writes in order. */
class GroupStream {
  constructor(transport, subscribeId, sequence, sendOrder) {
    this.chain = transport.createUnidirectionalStream({ sendOrder }).then((stream) => {
      this.writer = stream.getWriter();
      return this.writer.write(concat([encodeVarint(UNI_GROUP), message(encodeVarint(subscribeId), encodeVarint(sequence))]));
    });
    this.failed = false;
    this.chain.catch(() => { this.failed = true; });
  }
  write(frame) {
    const chunk = concat([encodeVarint(frame.byteLength), frame]);
    this.chain = this.chain.then(() => this.writer.write(chunk));
    this.chain.catch(() => { this.failed = true; });
  }
  close() {
    this.chain = this.chain.then(() => this.writer.close());
    this.chain.catch(() => {});
  }
}

/** A track of a published broadcast: groups of frames, fanned out to subscribers. */
export class TrackProducer {
  constructor(session, name, priority) {
    this.session = session;
    this.name = name;
    this.priority = priority;
    this.sequence = -1;
    this.frames = [];   // the current group's frames, for subscribers that join mid-group
    this.subscribers = new Map();  // subscribe id -> {stream, group: GroupStream | null}
    this.framesWritten = 0;
    // Resolves at the first subscription: for the catalog, when the relay has taken the broadcast.
    this.subscribed = new Promise((resolve) => { this.resolveSubscribed = resolve; });
  }

  /** Append a frame; a keyframe (or the first frame) starts a new group. */
  writeFrame(payload, keyframe) {
    if (keyframe || this.sequence < 0) {
      this.sequence += 1;
      this.frames = [];
      for (const [id, sub] of this.subscribers) {
        if (sub.group) sub.group.close();
        sub.group = this.#openGroup(id);
      }
    }
    this.frames.push(payload);
    this.framesWritten += 1;
    for (const sub of this.subscribers.values()) sub.group.write(payload);
  }

  #openGroup(subscribeId) {
    // Newer groups first, and the higher-priority track first (as @moq/net's priority.js).
    const sendOrder = this.priority * 2 ** 32 + this.sequence;
    return new GroupStream(this.session.transport, subscribeId, this.sequence, sendOrder);
  }

  addSubscriber(subscribeId, stream) {
    const sub = { stream, group: null };
    this.subscribers.set(subscribeId, sub);
    this.resolveSubscribed();
    if (this.sequence >= 0) {
      sub.group = this.#openGroup(subscribeId);
      for (const frame of this.frames) sub.group.write(frame);
    }
  }

  removeSubscriber(subscribeId) {
    const sub = this.subscribers.get(subscribeId);
    if (!sub) return;
    this.subscribers.delete(subscribeId);
    if (sub.group) sub.group.close();
  }

  end() {
    for (const [id, sub] of this.subscribers) {
      if (sub.group) sub.group.close();
      sub.stream.writable.close().catch(() => {});
      this.subscribers.delete(id);
    }
  }
}

/** A broadcast this session publishes; the relay learns of it through ANNOUNCE. */
export class BroadcastProducer {
  constructor(session, name) {
    this.session = session;
    this.name = name;
    this.tracks = new Map();
  }
  /** The track called name, made on first use. */
  track(name, priority = 0) {
    let track = this.tracks.get(name);
    if (!track) this.tracks.set(name, (track = new TrackProducer(this.session, name, priority)));
    return track;
  }
  end() {
    for (const track of this.tracks.values()) track.end();
    this.session.unpublish(this);
  }
}

// --- the session -----------------------------------------------------------------------------

function certificateHash(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.substr(i * 2, 2), 16);
  return { algorithm: "sha-256", value: bytes };
}

/** A moq-lite client session: publish broadcasts and subscribe to the relay's tracks. */
export class MoqSession {
  /**
   * Connect to url (https://host:port/moq), completing the SETUP. token goes in the
   * query (WebTransport has no headers); certificateSha256 pins a self-signed certificate.
   */
  static async connect(url, { token, certificateSha256 } = {}) {
    const target = new URL(url);
    if (token) target.searchParams.set("token", token);
    const options = certificateSha256 ? { serverCertificateHashes: [certificateHash(certificateSha256)] } : {};
    const transport = new WebTransport(target.toString(), options);
    await transport.ready;
    const session = new MoqSession(transport);
    await session.#setup();
    return session;
  }

  constructor(transport) {
    this.transport = transport;
    this.broadcasts = new Map();
    this.interests = new Set();   // {prefix, writer}: the relay's ANNOUNCE_PLEASE streams
    this.subscriptions = new Map();  // our subscribe id -> {onFrame, onEnd}
    this.nextSubscribeId = 0;
    this.closed = transport.closed.then((info) => info, (error) => ({ closeCode: -1, reason: String(error) }));
  }

  async #setup() {
    const stream = await this.transport.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    const implementation = utf8.encode("shopcast-host-console");
    const body = concat([
      encodeVarint(1), encodeVarint(LITE_DRAFT_02),
      encodeVarint(1), encodeVarint(PARAM_IMPLEMENTATION), encodeVarint(implementation.length), implementation,
    ]);
    const length = Uint8Array.of(body.length >> 8, body.length & 0xff);
    await writer.write(concat([encodeVarint(CLIENT_COMPAT), length, body]));
    writer.releaseLock();
    this.sessionStream = stream;  // kept open for the session's life
    const reader = new StreamReader(stream.readable);
    if ((await reader.varint()) !== SERVER_COMPAT) throw new Error("the server did not answer the moq-lite SETUP");
    const size = new DataView((await reader.bytes(2)).slice().buffer).getUint16(0);
    const version = new Cursor(await reader.bytes(size)).varint();
    if (version !== LITE_DRAFT_02) throw new Error(`the server chose moq-lite version 0x${version.toString(16)}`);
    this.version = version;
    this.#acceptBidis();
    this.#acceptUnis();
  }

  async #acceptBidis() {
    const reader = this.transport.incomingBidirectionalStreams.getReader();
    for (;;) {
      let next;
      try { next = await reader.read(); } catch { return; }
      if (next.done) return;
      this.#serveBidi(next.value).catch(() => {});
    }
  }

  async #serveBidi(stream) {
    const reader = new StreamReader(stream.readable);
    const type = await reader.varint();
    if (type === STREAM_ANNOUNCE) return this.#serveAnnounce(stream, reader);
    if (type === STREAM_SUBSCRIBE) return this.#serveSubscribe(stream, reader);
    stream.writable.abort().catch(() => {});
    reader.cancel();
  }

  async #serveAnnounce(stream, reader) {
    const prefix = new Cursor(await reader.message()).string();
    const writer = stream.writable.getWriter();
    const interest = { prefix, writer };
    const suffixes = [...this.broadcasts.keys()].map((name) => stripPrefix(prefix, name)).filter((s) => s !== null);
    await writer.write(message(encodeVarint(suffixes.length), ...suffixes.map(encodeString)));
    this.interests.add(interest);
    try {
      // The relay closes (or resets) the stream when it loses interest.
      while ((await reader.message()) !== undefined) { /* no messages are defined this way */ }
    } finally {
      this.interests.delete(interest);
    }
  }

  async #serveSubscribe(stream, reader) {
    const cursor = new Cursor(await reader.message());
    const id = cursor.varint();
    const broadcastName = cursor.string();
    const trackName = cursor.string();
    cursor.u8();  // the subscriber's priority: our send order is fixed per track
    const track = this.broadcasts.get(broadcastName)?.tracks.get(trackName);
    if (!track) {
      stream.writable.abort(new WebTransportError({ streamErrorCode: ERROR_NOT_FOUND })).catch(() => {});
      reader.cancel();
      return;
    }
    const writer = stream.writable.getWriter();
    await writer.write(message());  // SUBSCRIBE_OK (draft-02: empty)
    writer.releaseLock();
    track.addSubscriber(id, stream);
    try {
      while ((await reader.message()) !== undefined) { /* SUBSCRIBE_UPDATE: priority only */ }
    } finally {
      track.removeSubscriber(id);
    }
  }

  #announce(name, status) {
    for (const { prefix, writer } of this.interests) {
      const suffix = stripPrefix(prefix, name);
      if (suffix !== null) writer.write(message(Uint8Array.of(status), encodeString(suffix))).catch(() => {});
    }
  }

  /** Start publishing the broadcast name (a room id). */
  publish(name) {
    const broadcast = new BroadcastProducer(this, name);
    this.broadcasts.set(name, broadcast);
    this.#announce(name, ANNOUNCE_ACTIVE);
    return broadcast;
  }

  unpublish(broadcast) {
    if (this.broadcasts.get(broadcast.name) !== broadcast) return;
    this.broadcasts.delete(broadcast.name);
    this.#announce(broadcast.name, ANNOUNCE_ENDED);
  }

  // --- subscribing ---------------------------------------------------------------------------

  /**
   * Subscribe to broadcast/track on the relay; onFrame(payload, groupSequence) for each
   * frame. Resolves once SUBSCRIBE_OK arrives; rejects when the relay refuses.
   * Returns a function that unsubscribes.
   */
  async subscribe(broadcast, track, priority, onFrame) {
    const id = this.nextSubscribeId++;
    const stream = await this.transport.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    this.subscriptions.set(id, { onFrame });
    await writer.write(concat([encodeVarint(STREAM_SUBSCRIBE),
      message(encodeVarint(id), encodeString(broadcast), encodeString(track), Uint8Array.of(priority))]));
    const reader = new StreamReader(stream.readable);
    const ok = await reader.message().catch(() => undefined);
    if (ok === undefined) {
      this.subscriptions.delete(id);
      throw new Error(`subscription to ${broadcast}/${track} refused`);
    }
    return () => {
      this.subscriptions.delete(id);
      writer.close().catch(() => {});
      reader.cancel();
    };
  }

  async #acceptUnis() {
    const reader = this.transport.incomingUnidirectionalStreams.getReader();
    for (;;) {
      let next;
      try { next = await reader.read(); } catch { return; }
      if (next.done) return;
      this.#readGroup(next.value).catch(() => {});
    }
  }

  async #readGroup(readable) {
    const reader = new StreamReader(readable);
    if ((await reader.varint()) !== UNI_GROUP) { reader.cancel(); return; }
    const header = new Cursor(await reader.message());
    const id = header.varint();
    const sequence = header.varint();
    for (;;) {
      const frame = await reader.message();
      if (frame === undefined) return;
      const subscription = this.subscriptions.get(id);
      if (!subscription) { reader.cancel(); return; }
      subscription.onFrame(frame, sequence);
    }
  }

  close(reason = "host console closed") {
    for (const broadcast of [...this.broadcasts.values()]) broadcast.end();
    try { this.transport.close({ closeCode: 0, reason }); } catch { /* already closed */ }
  }
}

function stripPrefix(prefix, path) {
  const clean = prefix.split("/").filter(Boolean).join("/");
  if (!clean) return path;
  if (path === clean) return "";
  return path.startsWith(clean + "/") ? path.slice(clean.length + 1) : null;
}
