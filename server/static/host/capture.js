// Camera and microphone to a hang broadcast: WebCodecs encoders (H.264 in AVC format,
// else VP8; Opus), a catalog.json the viewers and the relay read, one group per keyframe.
// Also keeps, for every video frame, its capture time on the machine's wall clock, so
// the glass-to-glass delay can be measured at a viewer (bench/_glass.py).

import { hangFrame } from "./moq.js";

export const VIDEO_TRACK = "video";
export const AUDIO_TRACK = "audio";
export const CATALOG_TRACK = "catalog.json";
// Subscribe priorities of @moq/hang (catalog/priority.js), reused as our send order.
const PRIORITY = { catalog: 100, audio: 80, video: 60 };
// Codecs tried in order; AVC-format H.264 first as every viewer decodes it.
const VIDEO_CODECS = ["avc1.42e01f", "avc1.4d401f", "avc1.640028", "vp8"];

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function wallNowMs() { return performance.timeOrigin + performance.now(); }

/**
 * Encodes a MediaStream into broadcast (a BroadcastProducer) until stop(). options:
 * width, height, framerate (used when the camera does not say), videoBitrate,
 * audioBitrate (bit/s), keyframeIntervalUs, maxEncodeQueue (frames waiting in the
 * encoder before new ones are dropped), captureLogFrames (capture times kept): the
 * server's [host_console] settings.
 */
export class CameraPublisher {
  constructor(broadcast, options) {
    this.broadcast = broadcast;
    this.options = options;
    this.catalogTrack = broadcast.track(CATALOG_TRACK, PRIORITY.catalog);
    this.videoTrack = broadcast.track(VIDEO_TRACK, PRIORITY.video);
    this.audioTrack = null;
    this.videoRendition = null;
    this.audioRendition = null;
    this.stats = { videoFrames: 0, videoDropped: 0, audioFrames: 0, keyframes: 0, bytes: 0 };
    this.captures = [];   // [media_us, camera_timestamp_us, arrival_wall_ms, sent_wall_ms] per video frame
    this.pending = new Map();   // media_us -> its captures entry, until the encoder hands the frame out
    this.latestVideoUs = null;   // media time of the newest camera frame (what the preview shows)
    this.stopped = false;
    this.errors = [];
    // One media timeline for both tracks: microseconds since start() on this page's clock.
    this.startPerfUs = performance.now() * 1000;
  }

  /** Start encoding the stream's first video and audio tracks. */
  async start(stream) {
    const video = stream.getVideoTracks()[0];
    const audio = stream.getAudioTracks()[0];
    if (!video) throw new Error("no camera track");
    await this.#startVideo(video);
    if (audio) await this.#startAudio(audio);
  }

  async #chooseVideoConfig(settings) {
    const base = {
      width: settings.width || this.options.width, height: settings.height || this.options.height,
      bitrate: this.options.videoBitrate, framerate: settings.frameRate || this.options.framerate,
      latencyMode: "realtime",
    };
    for (const codec of VIDEO_CODECS) {
      const config = { ...base, codec, ...(codec.startsWith("avc1") ? { avc: { format: "avc" } } : {}) };
      try {
        if ((await VideoEncoder.isConfigSupported(config)).supported) return config;
      } catch { /* try the next codec */ }
    }
    throw new Error("this browser cannot encode H.264 or VP8 with WebCodecs");
  }

  async #startVideo(track) {
    const config = await this.#chooseVideoConfig(track.getSettings());
    this.videoConfig = config;
    let offsetUs = null;    // camera clock -> our media timeline, fixed at the first frame
    let lastKeyUs = -Infinity;
    const encoder = new VideoEncoder({
      output: (chunk, metadata) => this.#videoOutput(chunk, metadata, offsetUs),
      error: (error) => this.errors.push(`video encoder: ${error.message}`),
    });
    encoder.configure(config);
    this.videoEncoder = encoder;
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    this.videoReader = reader;
    (async () => {
      while (!this.stopped) {
        const { value: frame, done } = await reader.read();
        if (done) break;
        const arrivalMs = wallNowMs();
        if (offsetUs === null) offsetUs = performance.now() * 1000 - frame.timestamp - this.startPerfUs;
        const mediaUs = frame.timestamp + offsetUs;
        this.latestVideoUs = Math.max(0, Math.round(mediaUs));
        if (encoder.encodeQueueSize >= this.options.maxEncodeQueue) {
          this.stats.videoDropped += 1;   // realtime: a late frame is worth less than a fresh one
          frame.close();
          continue;
        }
        const keyFrame = mediaUs - lastKeyUs >= this.options.keyframeIntervalUs;
        if (keyFrame) lastKeyUs = mediaUs;
        this.#logCapture(Math.max(0, Math.round(mediaUs)), frame.timestamp, arrivalMs);
        encoder.encode(frame, { keyFrame });
        frame.close();
      }
    })().catch((error) => this.errors.push(`camera: ${error.message}`));
  }

  #logCapture(mediaUs, cameraUs, arrivalMs) {
    const entry = [mediaUs, cameraUs, arrivalMs, null];
    this.captures.push(entry);
    this.pending.set(mediaUs, entry);
    if (this.captures.length > this.options.captureLogFrames) {
      for (const [old] of this.captures.splice(0, this.captures.length - this.options.captureLogFrames)) this.pending.delete(old);
    }
  }

  #videoOutput(chunk, metadata, offsetUs) {
    if (metadata && metadata.decoderConfig) {
      const dc = metadata.decoderConfig;
      const rendition = {
        codec: dc.codec, container: { kind: "legacy" },
        codedWidth: dc.codedWidth || this.videoConfig.width, codedHeight: dc.codedHeight || this.videoConfig.height,
        framerate: this.videoConfig.framerate, bitrate: this.options.videoBitrate, optimizeForLatency: true,
      };
      if (dc.description) rendition.description = hex(dc.description);
      if (JSON.stringify(rendition) !== JSON.stringify(this.videoRendition)) {
        this.videoRendition = rendition;
        this.#publishCatalog();
      }
    }
    if (!this.videoRendition) return;   // nothing decodable before the first configuration
    const payload = new Uint8Array(chunk.byteLength);
    chunk.copyTo(payload);
    const keyframe = chunk.type === "key";
    const mediaUs = Math.max(0, Math.round(chunk.timestamp + offsetUs));
    this.videoTrack.writeFrame(hangFrame(mediaUs, payload), keyframe);
    const entry = this.pending.get(mediaUs);
    if (entry) { entry[3] = wallNowMs(); this.pending.delete(mediaUs); }
    this.stats.videoFrames += 1;
    this.stats.bytes += payload.length;
    if (keyframe) {
      this.stats.keyframes += 1;
      this.audioNewGroup = true;   // a late joiner's audio starts with its video
    }
  }

  async #startAudio(track) {
    const settings = track.getSettings();
    const config = {
      codec: "opus", sampleRate: settings.sampleRate || 48000,
      numberOfChannels: settings.channelCount || 1, bitrate: this.options.audioBitrate,
    };
    if (!(await AudioEncoder.isConfigSupported(config)).supported) {
      this.errors.push("this browser cannot encode Opus; publishing video only");
      return;
    }
    this.audioTrack = this.broadcast.track(AUDIO_TRACK, PRIORITY.audio);
    this.audioRendition = {
      codec: "opus", container: { kind: "legacy" }, sampleRate: config.sampleRate,
      numberOfChannels: config.numberOfChannels, bitrate: config.bitrate,
    };
    let offsetUs = null;
    const encoder = new AudioEncoder({
      output: (chunk) => {
        if (!this.videoRendition) return;   // audio joins once the catalog is out
        const payload = new Uint8Array(chunk.byteLength);
        chunk.copyTo(payload);
        this.audioTrack.writeFrame(hangFrame(chunk.timestamp + offsetUs, payload), this.audioNewGroup);
        this.audioNewGroup = false;
        this.stats.audioFrames += 1;
        this.stats.bytes += payload.length;
      },
      error: (error) => this.errors.push(`audio encoder: ${error.message}`),
    });
    encoder.configure(config);
    this.audioEncoder = encoder;
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    this.audioReader = reader;
    (async () => {
      while (!this.stopped) {
        const { value: data, done } = await reader.read();
        if (done) break;
        if (offsetUs === null) offsetUs = performance.now() * 1000 - data.timestamp - this.startPerfUs;
        if (data.sampleRate !== config.sampleRate || data.numberOfChannels !== config.numberOfChannels) {
          data.close();
          continue;
        }
        encoder.encode(data);
        data.close();
      }
    })().catch((error) => this.errors.push(`microphone: ${error.message}`));
  }

  #publishCatalog() {
    const catalog = { video: { renditions: { [VIDEO_TRACK]: this.videoRendition } } };
    if (this.audioRendition) catalog.audio = { renditions: { [AUDIO_TRACK]: this.audioRendition } };
    this.catalog = catalog;
    this.catalogTrack.writeFrame(new TextEncoder().encode(JSON.stringify(catalog)), true);
  }

  /**
   * The capture time (wall clock, ms) of each video frame: the camera's own timestamp, put
   * on the wall clock by the smallest camera-to-page delay seen, so a frame that waited
   * in the page's queue still counts from when the camera took it.
   */
  captureTimes() {
    let offsetMs = Infinity;
    for (const [, cameraUs, arrivalMs] of this.captures) offsetMs = Math.min(offsetMs, arrivalMs - cameraUs / 1000);
    // [media_us, captured_ms, sent_ms]: sent is when the encoded frame went to the session.
    return this.captures.map(([mediaUs, cameraUs, , sentMs]) => [mediaUs, cameraUs / 1000 + offsetMs, sentMs]);
  }

  stop() {
    this.stopped = true;
    for (const reader of [this.videoReader, this.audioReader]) if (reader) reader.cancel().catch(() => {});
    for (const encoder of [this.videoEncoder, this.audioEncoder]) {
      if (encoder && encoder.state !== "closed") encoder.close();
    }
  }
}
