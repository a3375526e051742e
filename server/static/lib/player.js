// The room player: @moq/watch (bundled in /static/vendor/moq-watch.js) decodes and draws the
// room's video and plays its audio with WebCodecs over WebTransport; this module pins the
// server's self-signed certificate by the hash from /api/v1/server, and reads the room's other
// tracks (viewers, chat, commerce) over the same moq-lite session, so one page is one viewer.
import "../vendor/moq-watch.js";

export function hasWebTransport() {
  return typeof globalThis.WebTransport === "function";
}

export function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

let serverInfoPromise = null;
/** GET /api/v1/server, once per page. */
export function serverInfo() {
  serverInfoPromise ??= fetch("/api/v1/server").then((r) => r.json());
  return serverInfoPromise;
}

/** The WebTransport options that pin this server's certificate. */
export async function webTransportOptions() {
  const info = await serverInfo();
  if (!info.certificate || !info.certificate.self_signed) return {};
  return { serverCertificateHashes: [{ algorithm: "sha-256", value: hexToBytes(info.certificate.sha256) }] };
}

export class RoomPlayer {
  /**
   * @param {HTMLElement} container where the <moq-watch> element and its canvas go
   * @param {{broadcast: string, moqPath: string, latencyMs: number, token?: string,
   *          announced?: boolean}} options
   */
  constructor(container, options) {
    this.options = options;
    this.trackHandlers = new Map();
    this.consumer = undefined;
    this.subscriptions = [];
    this.watch = document.createElement("moq-watch");
    this.canvas = document.createElement("canvas");
    this.canvas.setAttribute("aria-label", "video");
    this.watch.append(this.canvas);
    container.append(this.watch);
  }

  async start() {
    const options = this.options;
    const watch = this.watch;
    // Not reactive in @moq/watch: set before the URL starts the first connection attempt.
    watch.connection.webtransport = await webTransportOptions();
    watch.connection.websocket = { enabled: false };
    watch.setAttribute("muted", "");
    watch.setAttribute("visible", "always");
    watch.setAttribute("latency", String(options.latencyMs));
    // A replay (and a seek into it) is served on request, never announced: subscribe at once.
    if (options.announced === false) watch.reload = false;
    const url = new URL(options.moqPath, location.origin);
    if (options.token) url.searchParams.set("token", options.token);
    watch.setAttribute("name", options.broadcast);
    watch.setAttribute("url", url.toString());
    watch.broadcast.out.active.subscribe((consumer) => this.#onConsumer(consumer));
    this.#onConsumer(watch.broadcast.out.active.peek());
  }

  /** Call ``handler(payload: Uint8Array)`` for every frame of the room track ``name``, and
   * ``onMissing()`` when the broadcast has no such track. */
  onTrack(name, handler, onMissing = () => {}) {
    this.trackHandlers.set(name, { handler, onMissing });
    if (this.consumer) this.#subscribe(this.consumer, name);
  }

  #onConsumer(consumer) {
    if (!consumer || consumer === this.consumer) return;
    this.consumer = consumer;
    for (const name of this.trackHandlers.keys()) this.#subscribe(consumer, name);
  }

  async #subscribe(consumer, name) {
    const { handler, onMissing } = this.trackHandlers.get(name);
    let subscriber;
    try {
      subscriber = consumer.subscribe(name, { priority: 1 });
    } catch (e) { onMissing(e); return; }
    this.subscriptions.push(subscriber);
    let received = false;
    try {
      for (;;) {
        const group = await subscriber.recvGroup();
        if (!group) break;
        received = true;
        (async () => {
          for (;;) {
            const frame = await group.readFrame();
            if (!frame) return;
            try { handler(frame.payload); } catch (e) { console.warn(`track ${name}:`, e); }
          }
        })().catch(() => {});
      }
    } catch (e) {
      if (!received) onMissing(e);
      return;
    }
    if (!received && this.consumer === consumer) onMissing(new Error("track ended"));
  }

  remove() { this.watch.remove(); }

  get muted() { return this.watch.muted; }
  set muted(value) { this.watch.muted = value; }

  /** The media time (µs) of the frame on screen, or undefined before the first one. */
  playoutUs() {
    const ms = this.watch.renderer?.out?.timestamp?.peek();
    return ms === undefined || ms === null ? undefined : ms * 1000;
  }

  /** Counters for tests and the stats overlay. */
  stats() {
    const video = this.watch.video?.out?.stats?.peek();
    const audio = this.watch.audio?.out?.stats?.peek?.();
    return {
      framesDecoded: video ? video.frameCount : 0,
      videoBytes: video ? video.bytesReceived : 0,
      audioBytes: audio ? audio.bytesReceived : 0,
      frameTimestampMs: this.watch.renderer?.out?.timestamp?.peek() ?? null,
      status: this.watch.broadcast?.out?.status?.peek() ?? null,
      width: this.canvas.width, height: this.canvas.height,
    };
  }
}
