// Datagram mode in the browser (docs/datagram-mode.md): a WebTransport session at /dgram, one
// control stream (u32 length + msgpack), and packetizer datagrams (30-byte header, XOR FEC per
// block) that are put back together here, repaired, asked for again (NACK) and released in order;
// a lost video frame skips to the next keyframe. Frames are decoded with WebCodecs and drawn on a
// canvas; audio is played through an AudioContext once unmuted. Same interface as RoomPlayer.
import { decode, encode, splitHangFrame } from "./msgpack.js";
import { webTransportOptions } from "./player.js";

const HEADER_BYTES = 30;
const FLAG_KEYFRAME = 0x01;
const FLAG_PARITY = 0x02;
const NACK_TYPE = 0x01;
/** The player's bounds, from [web] datagram_* in conf/default.toml (the page passes its
 * settings.datagram as ``options.limits``): tickMs, the timer that releases due frames and sends
 * NACKs (ms); nackAfterMs, a frame still incomplete this long is asked for again, once (ms);
 * heldPacketsMax, packets that overtake their `subscribed`, per session (count);
 * framesPendingMax, frames being put together, per track (count); audioAheadMaxS, audio
 * scheduled further ahead than this is dropped, to catch up (s). */
const LIMIT_NAMES = ["tickMs", "nackAfterMs", "heldPacketsMax", "framesPendingMax", "audioAheadMaxS"];

const seqAfter = (a, b) => ((a - b) & 0xffff) !== 0 && ((a - b) & 0xffff) < 0x8000;
const fragmentSeqOffset = (index, k) => (k === 0 ? index : index + Math.floor(index / k));
const paritySeqOffset = (block, count, k) => Math.min((block + 1) * k, count) + block;
const fragmentLength = (index, size, stride) => Math.min(stride, size - index * stride);

function parseHeader(bytes) {
  if (bytes.byteLength < HEADER_BYTES || bytes[0] >> 4 !== 1) return null;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    flags: bytes[0], fecK: bytes[1], track: v.getUint16(2), packetSeq: v.getUint16(4),
    frameSeq: v.getUint16(6), index: v.getUint16(8), count: v.getUint16(10), stride: v.getUint16(12),
    group: v.getUint32(14), size: v.getUint32(18), timestampUs: v.getUint32(22) * 2 ** 32 + v.getUint32(26),
    payload: bytes.subarray(HEADER_BYTES),
  };
}

/** One frame being put together from its packets. */
class FrameAssembly {
  constructor(h, now) {
    Object.assign(this, { count: h.count, stride: h.stride, size: h.size, fecK: h.fecK, group: h.group,
      timestampUs: h.timestampUs, keyframe: (h.flags & FLAG_KEYFRAME) !== 0, firstPacketSeq: null });
    this.data = new Array(h.count);
    this.parity = new Map();
    this.have = 0;
    this.firstSeen = now;
    this.nacked = false;
  }

  add(h) {
    const parity = (h.flags & FLAG_PARITY) !== 0;
    const offset = parity ? paritySeqOffset(h.index, this.count, this.fecK) : fragmentSeqOffset(h.index, this.fecK);
    this.firstPacketSeq ??= (h.packetSeq - offset) & 0xffff;
    if (parity) { this.parity.set(h.index, h.payload.slice()); return; }
    if (h.index >= this.count || this.data[h.index]) return;
    this.data[h.index] = h.payload.slice();
    this.have++;
  }

  /** Repair single losses per FEC block from its parity. */
  repair() {
    if (!this.fecK) return;
    for (const [block, parity] of this.parity) {
      const start = block * this.fecK, end = Math.min(start + this.fecK, this.count);
      const missing = [];
      for (let i = start; i < end; i++) if (!this.data[i]) missing.push(i);
      if (missing.length !== 1) continue;
      const out = parity.slice();
      for (let i = start; i < end; i++) {
        const fragment = this.data[i];
        if (!fragment) continue;
        for (let j = 0; j < fragment.length && j < out.length; j++) out[j] ^= fragment[j];
      }
      this.data[missing[0]] = out.subarray(0, fragmentLength(missing[0], this.size, this.stride));
      this.have++;
    }
  }

  get complete() { return this.have === this.count; }

  bytes() {
    const out = new Uint8Array(this.size);
    let at = 0;
    for (const fragment of this.data) { out.set(fragment.subarray(0, this.size - at), at); at += fragment.length; }
    return out;
  }

  missingPacketSeqs() {
    if (this.firstPacketSeq === null) return [];
    const out = [];
    for (let i = 0; i < this.count; i++) {
      if (!this.data[i]) out.push((this.firstPacketSeq + fragmentSeqOffset(i, this.fecK)) & 0xffff);
    }
    return out;
  }
}

class TrackReceiver {
  constructor(name, video, deliver, limits) {
    this.name = name;
    this.limits = limits;
    this.video = video;
    this.deliver = deliver;
    this.frames = new Map();
    this.next = null;
    this.waitingForKeyframe = video;
    this.stats = { delivered: 0, skipped: 0, repaired: 0, nacked: 0 };
  }

  push(h, now) {
    if (this.next === null) this.next = h.frameSeq;
    if (h.frameSeq !== this.next && !seqAfter(h.frameSeq, this.next)) return;   // already released
    let frame = this.frames.get(h.frameSeq);
    if (!frame) {
      if (this.frames.size >= this.limits.framesPendingMax) return;
      frame = new FrameAssembly(h, now);
      this.frames.set(h.frameSeq, frame);
    }
    const had = frame.have;
    frame.add(h);
    if (!frame.complete) {
      frame.repair();
      if (frame.complete && frame.have > had + 1) this.stats.repaired++;
    }
    this.release(now, Infinity);
  }

  /** Release complete frames in order; skip a frame missing past ``deadlineMs``. */
  release(now, deadlineMs) {
    while (this.next !== null) {
      const frame = this.frames.get(this.next);
      if (frame && frame.complete) {
        this.frames.delete(this.next);
        this.next = (this.next + 1) & 0xffff;
        if (this.video && this.waitingForKeyframe && !frame.keyframe) { this.stats.skipped++; continue; }
        this.waitingForKeyframe = false;
        this.stats.delivered++;
        this.deliver(frame);
        continue;
      }
      // Missing or incomplete: wait, unless a later frame has waited past the deadline.
      let oldestLater = Infinity;
      for (const [seq, f] of this.frames) if (seqAfter(seq, this.next)) oldestLater = Math.min(oldestLater, f.firstSeen);
      const since = frame ? Math.min(frame.firstSeen, oldestLater) : oldestLater;
      if (since === Infinity || now - since < deadlineMs) return;
      this.frames.delete(this.next);
      this.next = (this.next + 1) & 0xffff;
      this.stats.skipped++;
      if (this.video) this.waitingForKeyframe = true;
    }
  }

  nacks(now) {
    const seqs = [];
    for (const frame of this.frames.values()) {
      if (!frame.complete && !frame.nacked && now - frame.firstSeen >= this.limits.nackAfterMs) {
        frame.nacked = true;
        seqs.push(...frame.missingPacketSeqs());
      }
    }
    this.stats.nacked += seqs.length;
    return seqs;
  }
}

export class DatagramPlayer {
  /**
   * @param {HTMLElement} container
   * @param {{broadcast: string, path: string, latencyMs: number, token?: string,
   *          limits: {tickMs: number, nackAfterMs: number, heldPacketsMax: number,
   *                   framesPendingMax: number, audioAheadMaxS: number}}} options
   */
  constructor(container, options) {
    this.options = options;
    const limits = options.limits || {};
    const missing = LIMIT_NAMES.filter((name) => typeof limits[name] !== "number");
    if (missing.length) throw new Error(`DatagramPlayer: options.limits lacks ${missing.join(", ")} ([web] datagram_*)`);
    this.limits = { ...limits };
    this.canvas = document.createElement("canvas");
    this.canvas.setAttribute("aria-label", "video");
    this.canvas.className = "datagram-video";
    container.append(this.canvas);
    this.context2d = this.canvas.getContext("2d");
    this.handlers = new Map();          // track name -> {handler, onMissing}
    this.subscriptions = new Map();     // subscription id -> {name, receiver?}
    this.byTrackId = new Map();         // server track id -> TrackReceiver
    this.held = [];
    this.nextId = 1;
    this.framesDecoded = 0;
    this.frameTimestampUs = undefined;
    this._muted = true;
    this.audio = null;
  }

  async start() {
    const url = new URL(this.options.path, location.origin);
    if (this.options.token) url.searchParams.set("token", this.options.token);
    this.transport = new WebTransport(url.toString(), await webTransportOptions());
    await this.transport.ready;
    const control = await this.transport.createBidirectionalStream();
    this.control = control.writable.getWriter();
    this.nackWriter = this.transport.datagrams.writable.getWriter();
    this.#readControl(control.readable.getReader());
    this.#readDatagrams(this.transport.datagrams.readable.getReader());
    this.timer = setInterval(() => this.#tick(), this.limits.tickMs);
    this.transport.closed.finally(() => clearInterval(this.timer));
    this.#subscribe("catalog.json", false, (frame) => this.#onCatalog(JSON.parse(new TextDecoder().decode(frame.bytes()))));
    for (const name of this.handlers.keys()) this.#subscribeRoomTrack(name);
  }

  onTrack(name, handler, onMissing = () => {}) {
    this.handlers.set(name, { handler, onMissing });
    if (this.control) this.#subscribeRoomTrack(name);
  }

  #subscribeRoomTrack(name) {
    const { handler } = this.handlers.get(name);
    this.#subscribe(name, false, (frame) => handler(frame.bytes()));
  }

  #subscribe(name, video, deliver) {
    const id = this.nextId++;
    this.subscriptions.set(id, { name, video, deliver });
    const body = encode({ type: "subscribe", id, broadcast: this.options.broadcast, track: name });
    const framed = new Uint8Array(4 + body.length);
    new DataView(framed.buffer).setUint32(0, body.length);
    framed.set(body, 4);
    this.control.write(framed);
  }

  async #readControl(reader) {
    let buffer = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ done: true }));
      if (done) return;
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer); joined.set(value, buffer.length);
      buffer = joined;
      while (buffer.length >= 4) {
        const size = new DataView(buffer.buffer, buffer.byteOffset).getUint32(0);
        if (buffer.length < 4 + size) break;
        this.#onControl(decode(buffer.slice(4, 4 + size)));
        buffer = buffer.slice(4 + size);
      }
    }
  }

  #onControl(message) {
    const sub = this.subscriptions.get(message.id);
    if (!sub) return;
    if (message.type === "subscribed") {
      const receiver = new TrackReceiver(sub.name, message.video, sub.deliver, this.limits);
      sub.receiver = receiver;
      this.byTrackId.set(message.track_id, receiver);
      const mine = this.held.filter((h) => h.track === message.track_id);
      this.held = this.held.filter((h) => h.track !== message.track_id);
      for (const h of mine) this.#onPacket(h);
    } else if (message.type === "error") {
      this.handlers.get(sub.name)?.onMissing(new Error(message.reason));
    }
  }

  async #readDatagrams(reader) {
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ done: true }));
      if (done) return;
      const h = parseHeader(value);
      if (h) this.#onPacket(h);
    }
  }

  #onPacket(h) {
    const receiver = this.byTrackId.get(h.track);
    if (!receiver) { if (this.held.length < this.limits.heldPacketsMax) this.held.push(h); return; }
    receiver.push(h, performance.now());
  }

  #tick() {
    const now = performance.now();
    for (const [trackId, receiver] of this.byTrackId) {
      receiver.release(now, this.options.latencyMs);
      const seqs = receiver.nacks(now);
      for (let i = 0; i < seqs.length; i += 64) {
        const part = seqs.slice(i, i + 64);
        const nack = new Uint8Array(3 + 2 * part.length);
        const v = new DataView(nack.buffer);
        nack[0] = NACK_TYPE; v.setUint16(1, trackId);
        part.forEach((s, j) => v.setUint16(3 + 2 * j, s));
        this.nackWriter.write(nack).catch(() => {});
      }
    }
  }

  #onCatalog(catalog) {
    if (this.catalog) return;
    this.catalog = catalog;
    const hex = (s) => (s ? Uint8Array.from(s.match(/../g), (b) => parseInt(b, 16)) : undefined);
    const [videoName, video] = Object.entries(catalog.video?.renditions || {})[0] || [];
    if (video) {
      this.canvas.width = video.codedWidth || 640;
      this.canvas.height = video.codedHeight || 360;
      this.videoDecoder = new VideoDecoder({
        output: (frame) => {
          this.context2d.drawImage(frame, 0, 0, this.canvas.width, this.canvas.height);
          this.framesDecoded++;
          this.frameTimestampUs = frame.timestamp;
          frame.close();
        },
        error: (e) => console.warn("video decoder:", e),
      });
      this.videoDecoder.configure({ codec: video.codec, description: hex(video.description), optimizeForLatency: true });
      this.#subscribe(videoName, true, (frame) => {
        const { timestampUs, payload } = splitHangFrame(frame.bytes());
        if (this.videoDecoder.state !== "configured") return;
        this.videoDecoder.decode(new EncodedVideoChunk({ type: frame.keyframe ? "key" : "delta", timestamp: timestampUs, data: payload }));
      });
    }
    const [audioName, audio] = Object.entries(catalog.audio?.renditions || {})[0] || [];
    if (audio) {
      this.audioDecoder = new AudioDecoder({
        output: (data) => this.#play(data),
        error: (e) => console.warn("audio decoder:", e),
      });
      this.audioDecoder.configure({ codec: audio.codec, sampleRate: audio.sampleRate,
        numberOfChannels: audio.numberOfChannels, description: hex(audio.description) });
      this.audioBytes = 0;
      this.#subscribe(audioName, false, (frame) => {
        const { timestampUs, payload } = splitHangFrame(frame.bytes());
        this.audioBytes += payload.length;
        if (this.audioDecoder.state === "configured") {
          this.audioDecoder.decode(new EncodedAudioChunk({ type: "key", timestamp: timestampUs, data: payload }));
        }
      });
    }
  }

  #play(data) {
    const ctx = this.audio;
    if (!ctx || this._muted) { data.close(); return; }
    const buffer = ctx.createBuffer(data.numberOfChannels, data.numberOfFrames, data.sampleRate);
    for (let c = 0; c < data.numberOfChannels; c++) {
      const plane = new Float32Array(data.numberOfFrames);
      data.copyTo(plane, { planeIndex: c, format: "f32-planar" });
      buffer.copyToChannel(plane, c);
    }
    data.close();
    const now = ctx.currentTime;
    if (!this.audioAt || this.audioAt < now || this.audioAt - now > this.limits.audioAheadMaxS) this.audioAt = now + this.options.latencyMs / 1000;
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    source.start(this.audioAt);
    this.audioAt += buffer.duration;
  }

  get muted() { return this._muted; }
  set muted(value) {
    this._muted = value;
    if (!value) { this.audio ??= new AudioContext(); this.audio.resume(); }
  }

  playoutUs() { return this.frameTimestampUs; }

  stats() {
    const tracks = {};
    for (const r of this.byTrackId.values()) tracks[r.name] = { ...r.stats };
    return { mode: "datagram", framesDecoded: this.framesDecoded, audioBytes: this.audioBytes || 0,
      frameTimestampMs: this.frameTimestampUs === undefined ? null : this.frameTimestampUs / 1000,
      width: this.canvas.width, height: this.canvas.height, status: this.framesDecoded ? "live" : "loading", tracks };
  }

  remove() { clearInterval(this.timer); try { this.transport.close(); } catch { /* closed */ } this.canvas.remove(); }
}
