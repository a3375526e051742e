// The small msgpack subset the chat session and the chat/viewers tracks use: nil, bools,
// integers, floats, strings, binary, arrays and maps (server/_interaction.py).

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder("utf-8", { fatal: true });

export function encode(value) {
  const out = [];
  const push = (...bytes) => out.push(Uint8Array.from(bytes));
  const u32 = (n) => [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
  const walk = (v) => {
    if (v === null || v === undefined) push(0xc0);
    else if (v === false) push(0xc2);
    else if (v === true) push(0xc3);
    else if (typeof v === "number" && Number.isInteger(v) && Math.abs(v) < 2 ** 31) {
      if (v >= 0 && v < 0x80) push(v);
      else if (v < 0 && v >= -32) push(v & 0xff);
      else if (v >= 0) push(0xce, ...u32(v));
      else push(0xd2, ...u32(v >>> 0));
    } else if (typeof v === "number") {
      const bytes = new Uint8Array(9);
      bytes[0] = 0xcb;
      new DataView(bytes.buffer).setFloat64(1, v);
      out.push(bytes);
    } else if (typeof v === "string") {
      const bytes = utf8.encode(v);
      if (bytes.length < 32) push(0xa0 | bytes.length);
      else push(0xdb, ...u32(bytes.length));
      out.push(bytes);
    } else if (Array.isArray(v)) {
      if (v.length < 16) push(0x90 | v.length); else push(0xdd, ...u32(v.length));
      v.forEach(walk);
    } else if (typeof v === "object") {
      const entries = Object.entries(v).filter(([, x]) => x !== undefined);
      if (entries.length < 16) push(0x80 | entries.length); else push(0xdf, ...u32(entries.length));
      for (const [k, x] of entries) { walk(k); walk(x); }
    } else throw new TypeError(`cannot encode ${typeof v}`);
  };
  walk(value);
  const size = out.reduce((n, p) => n + p.length, 0);
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const part of out) { bytes.set(part, at); at += part.length; }
  return bytes;
}

export function decode(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const need = (n) => { if (at + n > bytes.length) throw new Error("truncated msgpack"); };
  const u8 = () => { need(1); return bytes[at++]; };
  const take = (n) => { need(n); const s = bytes.subarray(at, at + n); at += n; return s; };
  const num = (getter, n) => { need(n); const v = view[getter](at); at += n; return v; };
  const u64 = (signed) => { need(8); const hi = signed ? view.getInt32(at) : view.getUint32(at); const lo = view.getUint32(at + 4); at += 8; return hi * 2 ** 32 + lo; };
  const str = (n) => fromUtf8.decode(take(n));
  const arr = (n) => Array.from({ length: n }, () => read());
  const map = (n) => { const o = {}; for (let i = 0; i < n; i++) { const k = read(); o[k] = read(); } return o; };
  const read = () => {
    const b = u8();
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return take(u8()).slice();
      case 0xc5: return take(num("getUint16", 2)).slice();
      case 0xc6: return take(num("getUint32", 4)).slice();
      case 0xca: return num("getFloat32", 4);
      case 0xcb: return num("getFloat64", 8);
      case 0xcc: return u8();
      case 0xcd: return num("getUint16", 2);
      case 0xce: return num("getUint32", 4);
      case 0xcf: return u64(false);
      case 0xd0: return num("getInt8", 1);
      case 0xd1: return num("getInt16", 2);
      case 0xd2: return num("getInt32", 4);
      case 0xd3: return u64(true);
      case 0xd9: return str(u8());
      case 0xda: return str(num("getUint16", 2));
      case 0xdb: return str(num("getUint32", 4));
      case 0xdc: return arr(num("getUint16", 2));
      case 0xdd: return arr(num("getUint32", 4));
      case 0xde: return map(num("getUint16", 2));
      case 0xdf: return map(num("getUint32", 4));
      default: throw new Error(`msgpack type 0x${b.toString(16)} is not supported`);
    }
  };
  const value = read();
  if (at !== bytes.length) throw new Error("trailing bytes after msgpack object");
  return value;
}
