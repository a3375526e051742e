// A small msgpack codec for the chat session and the room tracks (chat, viewers, commerce):
// maps, arrays, strings, binaries, integers, floats, booleans and nil. Decoding is bounded by
// the input: a declared length past the end of the buffer is an error, never an allocation.

const textDecoder = new TextDecoder("utf-8", { fatal: true });
const textEncoder = new TextEncoder();

export function decode(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const need = (n) => {
    if (pos + n > bytes.byteLength) throw new Error("msgpack: truncated");
  };
  const str = (n) => { need(n); const s = textDecoder.decode(bytes.subarray(pos, pos + n)); pos += n; return s; };
  const bin = (n) => { need(n); const b = bytes.slice(pos, pos + n); pos += n; return b; };
  const arr = (n, depth) => { const out = []; for (let i = 0; i < n; i++) out.push(item(depth)); return out; };
  const map = (n, depth) => {
    const out = {};
    for (let i = 0; i < n; i++) { const k = item(depth); out[String(k)] = item(depth); }
    return out;
  };
  const u8 = () => { need(1); return view.getUint8(pos++); };
  const u16 = () => { need(2); const v = view.getUint16(pos); pos += 2; return v; };
  const u32 = () => { need(4); const v = view.getUint32(pos); pos += 4; return v; };
  function item(depth) {
    if (depth > 32) throw new Error("msgpack: nested too deeply");
    const d = depth + 1;
    const t = u8();
    if (t <= 0x7f) return t;
    if (t >= 0xe0) return t - 0x100;
    if ((t & 0xf0) === 0x80) return map(t & 0x0f, d);
    if ((t & 0xf0) === 0x90) return arr(t & 0x0f, d);
    if ((t & 0xe0) === 0xa0) return str(t & 0x1f);
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(u8());
      case 0xc5: return bin(u16());
      case 0xc6: return bin(u32());
      case 0xca: { need(4); const v = view.getFloat32(pos); pos += 4; return v; }
      case 0xcb: { need(8); const v = view.getFloat64(pos); pos += 8; return v; }
      case 0xcc: return u8();
      case 0xcd: return u16();
      case 0xce: return u32();
      case 0xcf: { need(8); const v = view.getBigUint64(pos); pos += 8; return Number(v); }
      case 0xd0: { need(1); return view.getInt8(pos++); }
      case 0xd1: { need(2); const v = view.getInt16(pos); pos += 2; return v; }
      case 0xd2: { need(4); const v = view.getInt32(pos); pos += 4; return v; }
      case 0xd3: { need(8); const v = view.getBigInt64(pos); pos += 8; return Number(v); }
      case 0xd9: return str(u8());
      case 0xda: return str(u16());
      case 0xdb: return str(u32());
      case 0xdc: return arr(u16(), d);
      case 0xdd: return arr(u32(), d);
      case 0xde: return map(u16(), d);
      case 0xdf: return map(u32(), d);
      default: throw new Error(`msgpack: unsupported type 0x${t.toString(16)}`);
    }
  }
  const value = item(0);
  if (pos !== bytes.byteLength) throw new Error("msgpack: trailing bytes");
  return value;
}

export function encode(value) {
  const out = [];
  const u16 = (n) => out.push(n >> 8, n & 0xff);
  const u32 = (n) => out.push(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  function put(v) {
    if (v === null || v === undefined) out.push(0xc0);
    else if (v === true) out.push(0xc3);
    else if (v === false) out.push(0xc2);
    else if (typeof v === "number" && Number.isInteger(v) && Math.abs(v) < 2 ** 31) {
      if (v >= 0 && v <= 0x7f) out.push(v);
      else if (v < 0 && v >= -32) out.push(v & 0xff);
      else if (v >= 0) { out.push(0xce); u32(v); }
      else { out.push(0xd2); u32(v >>> 0); }
    } else if (typeof v === "number") {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setFloat64(0, v);
      out.push(0xcb, ...b);
    } else if (typeof v === "string") {
      const b = textEncoder.encode(v);
      if (b.length < 32) out.push(0xa0 | b.length);
      else if (b.length < 256) out.push(0xd9, b.length);
      else if (b.length < 65536) { out.push(0xda); u16(b.length); }
      else { out.push(0xdb); u32(b.length); }
      for (const x of b) out.push(x);
    } else if (Array.isArray(v)) {
      if (v.length < 16) out.push(0x90 | v.length); else { out.push(0xdc); u16(v.length); }
      v.forEach(put);
    } else if (typeof v === "object") {
      const entries = Object.entries(v).filter(([, x]) => x !== undefined);
      if (entries.length < 16) out.push(0x80 | entries.length); else { out.push(0xde); u16(entries.length); }
      for (const [k, x] of entries) { put(k); put(x); }
    } else throw new Error(`msgpack: cannot encode ${typeof v}`);
  }
  put(value);
  return new Uint8Array(out);
}

/** A hang frame: a QUIC varint timestamp (µs), then the payload. */
export function splitHangFrame(bytes) {
  if (bytes.byteLength === 0) throw new Error("hang frame is empty");
  const size = 1 << (bytes[0] >> 6);
  if (bytes.byteLength < size) throw new Error("hang frame timestamp is truncated");
  let ts = bytes[0] & 0x3f;
  for (let i = 1; i < size; i++) ts = ts * 256 + bytes[i];
  return { timestampUs: ts, payload: bytes.subarray(size) };
}
