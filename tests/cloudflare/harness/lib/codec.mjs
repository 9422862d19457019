// Carries queue message bodies from the JS worker inside Miniflare (workerd) to
// Node as JSON. Bodies are structured-clone values ("v8" content type); JSON
// alone would lose bytes, dates, Maps, Sets, undefined and bigints, so those are
// tagged. Both functions are self-contained: miniflare.mjs injects their source
// text into the worker script, so they must not refer to anything outside.

export const ENVELOPE_TAG = "$refluxo_harness";

export function encodeBody(value) {
  const TAG = "$refluxo_harness";
  const b64 = (u8) => {
    let s = "";
    for (let i = 0; i < u8.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    }
    return btoa(s);
  };
  const enc = (v) => {
    if (v === undefined) return { [TAG]: "undefined" };
    if (typeof v === "bigint") return { [TAG]: "bigint", v: v.toString() };
    if (v === null || typeof v !== "object") return v;
    if (v instanceof Date) return { [TAG]: "date", v: v.getTime() };
    if (v instanceof ArrayBuffer) return { [TAG]: "bytes", t: "ArrayBuffer", v: b64(new Uint8Array(v)) };
    if (ArrayBuffer.isView(v)) {
      const u8 = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      return { [TAG]: "bytes", t: v.constructor.name, v: b64(u8) };
    }
    if (Array.isArray(v)) return v.map(enc);
    if (v instanceof Map) return { [TAG]: "map", v: [...v].map(([k, x]) => [enc(k), enc(x)]) };
    if (v instanceof Set) return { [TAG]: "set", v: [...v].map(enc) };
    const o = {};
    for (const k of Object.keys(v)) o[k] = enc(v[k]);
    return TAG in o ? { [TAG]: "object", v: o } : o;
  };
  return enc(value);
}

export function decodeBody(value) {
  const TAG = "$refluxo_harness";
  const unb64 = (s) => {
    const bin = atob(s);
    const u8 = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u8[i] = bin.charCodeAt(i);
    return u8;
  };
  const dec = (v) => {
    if (v === null || typeof v !== "object") return v;
    if (Array.isArray(v)) return v.map(dec);
    switch (v[TAG]) {
      case undefined:
        break;
      case "undefined":
        return undefined;
      case "bigint":
        return BigInt(v.v);
      case "date":
        return new Date(v.v);
      case "bytes": {
        const u8 = unb64(v.v);
        if (v.t === "ArrayBuffer") return u8.buffer;
        const Ctor = globalThis[v.t];
        return typeof Ctor === "function" && Ctor !== Uint8Array
          ? new Ctor(u8.buffer, 0, u8.byteLength / (Ctor.BYTES_PER_ELEMENT ?? 1))
          : u8;
      }
      case "map":
        return new Map(v.v.map(([k, x]) => [dec(k), dec(x)]));
      case "set":
        return new Set(v.v.map(dec));
      case "object": {
        const o = {};
        for (const k of Object.keys(v.v)) o[k] = dec(v.v[k]);
        return o;
      }
      default:
        break;
    }
    const o = {};
    for (const k of Object.keys(v)) o[k] = dec(v[k]);
    return o;
  };
  return dec(value);
}
