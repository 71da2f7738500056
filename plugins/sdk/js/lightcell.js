// Lightcell's JavaScript SDK for http-filter plugins (README.md next to this file).
//
// A plugin is an ES module that exports the world's functions in camelCase
// (wantedPhases, onOpen, onRequestHeaders, onRequestBody, onRequestTrailers,
// onResponseHeaders, onResponseBody, onResponseTrailers, onClose) and is built
// into a component by componentize-js (plugins/build.py). This module only
// builds and reads the values those functions exchange, in the shapes
// componentize-js converts to and from the WIT types:
//   variant  -> {tag: 'case-name', val: payload}      (decision)
//   record   -> plain object, camelCase field names    (header, changes, ...)
//   flags    -> object of booleans, camelCase names    (phases)
//   enum     -> the case name as a string              (log-level)
//   option   -> the value, or undefined for none       (changes.body)
//   list<u8> -> Uint8Array                             (bodies, header values)
//   u64/s64  -> BigInt
// A plugin is built with no WASI at all: there is no console, no clock and no
// real randomness inside it (Math.random is deterministic); use the `log`,
// `clock` and `random` capabilities instead. An uncaught exception traps: the
// request faults under the listener's failure mode.

import { log as hostLog } from 'lightcell:filter/log@0.1.0';

const ENCODER = new TextEncoder();
const DECODER = new TextDecoder('utf-8', { fatal: true });
const EMPTY = new Uint8Array(0);

// --- bytes and text ------------------------------------------------------------

/** UTF-8 bytes of a string; a Uint8Array is returned as it is. */
export function bytes(value) {
  if (typeof value === 'string') return ENCODER.encode(value);
  // Not `instanceof`: the arrays componentize-js hands to hooks come from
  // another realm (its bindings' global), whose Uint8Array is another constructor.
  if (ArrayBuffer.isView(value)) {
    return Object.prototype.toString.call(value) === '[object Uint8Array]'
      ? value
      : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  if (value === undefined || value === null) return EMPTY;
  throw new TypeError(`expected a string or a Uint8Array, got ${typeof value}`);
}

/** The text of UTF-8 bytes; throws a TypeError on invalid UTF-8. */
export function text(data) {
  return DECODER.decode(data);
}

/** The text of UTF-8 bytes, or undefined if they are not valid UTF-8. */
export function textOrUndefined(data) {
  try {
    return DECODER.decode(data);
  } catch {
    return undefined;
  }
}

/** JSON.parse of UTF-8 bytes: {ok: true, value} or {ok: false, error} (never throws). */
export function parseJson(data) {
  try {
    return { ok: true, value: JSON.parse(DECODER.decode(data)) };
  } catch (e) {
    return { ok: false, error: String(e && e.message ? e.message : e) };
  }
}

/** Compact JSON of a value, as UTF-8 bytes. */
export function jsonBytes(value) {
  return ENCODER.encode(JSON.stringify(value));
}

// --- headers and attributes ----------------------------------------------------

function headerList(headers) {
  if (headers === undefined || headers === null) return [];
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  return pairs.map((h) => {
    const [name, value] = Array.isArray(h) ? h : [h.name, h.value];
    if (typeof name !== 'string') throw new TypeError('a header name must be a string');
    return { name: name.toLowerCase(), value: bytes(value) };
  });
}

/** Every value of header `name` (case-insensitive), as Uint8Arrays, in order. */
export function headerValuesBytes(headers, name) {
  const want = name.toLowerCase();
  return headers.filter((h) => h.name.toLowerCase() === want).map((h) => h.value);
}

/** The first value of header `name` as text (undefined if missing or not UTF-8). */
export function header(headers, name) {
  const [first] = headerValuesBytes(headers, name);
  return first === undefined ? undefined : textOrUndefined(first);
}

/** Every value of header `name` as text (values that are not UTF-8 are left out). */
export function headerValues(headers, name) {
  return headerValuesBytes(headers, name).map(textOrUndefined).filter((v) => v !== undefined);
}

/** The value of attribute `name` (e.g. 'request.path'), or undefined. */
export function attribute(attributes, name) {
  const found = attributes.find((a) => a.name === name);
  return found === undefined ? undefined : found.value;
}

// --- decisions -------------------------------------------------------------------

/** Forward what the hook got, unchanged. */
export function continue_() {
  return { tag: 'continue' };
}

/**
 * Forward with changes. `set` / `append`: headers as an object {name: value},
 * or a list of [name, value] pairs or {name, value} records (values: string or
 * Uint8Array); `remove`: a list of names; `body` (body hooks only): the bytes
 * (string or Uint8Array) to forward instead of the chunk, '' to drop it, or
 * undefined to leave it unchanged.
 */
export function modify({ set, append, remove, body } = {}) {
  const removed = (remove ?? []).map((n) => {
    if (typeof n !== 'string') throw new TypeError('a removed header name must be a string');
    return n.toLowerCase();
  });
  return {
    tag: 'modify',
    val: {
      headers: { set: headerList(set), append: headerList(append), remove: removed },
      body: body === undefined ? undefined : bytes(body),
    },
  };
}

/** Answer the client now with this status (200..599), headers and body. */
export function respond(status, headers, body) {
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    throw new RangeError(`respond: status ${status} is outside 200..599`);
  }
  return { tag: 'respond', val: { status, headers: headerList(headers), body: bytes(body) } };
}

/** respond() with a JSON body and content-type application/json. */
export function respondJson(status, value, headers) {
  const all = [...headerList(headers), { name: 'content-type', value: bytes('application/json') }];
  return respond(status, all, jsonBytes(value));
}

// --- phases ----------------------------------------------------------------------

const PHASES = {
  'request-headers': 'requestHeaders',
  'request-body': 'requestBody',
  'request-trailers': 'requestTrailers',
  'response-headers': 'responseHeaders',
  'response-body': 'responseBody',
  'response-trailers': 'responseTrailers',
};

/** The phases flags for wantedPhases(): phases('request-headers', 'request-body'). */
export function phases(...names) {
  const flags = {};
  for (const name of names) {
    const key = PHASES[name];
    if (key === undefined) throw new TypeError(`unknown phase ${JSON.stringify(name)}`);
    flags[key] = true;
  }
  return flags;
}

// --- config ------------------------------------------------------------------------

/**
 * Split a listener's config string into [key, value] pairs, in order:
 * entries separated by `sep` (default ';'), each `key=value` (a bare `key`
 * gives value ''); blanks around keys and values and empty entries are ignored.
 */
export function configEntries(config, sep = ';') {
  const out = [];
  for (const raw of config.split(sep)) {
    const entry = raw.trim();
    if (entry === '') continue;
    const eq = entry.indexOf('=');
    out.push(eq < 0 ? [entry, ''] : [entry.slice(0, eq).trim(), entry.slice(eq + 1).trim()]);
  }
  return out;
}

// --- log (grant `log`) -------------------------------------------------------------

/** A log line at `level` ('trace' | 'debug' | 'info' | 'warn' | 'error'). Needs the
 * `log` grant: without it the call faults the request. */
export function log(level, message) {
  hostLog(level, String(message));
}

export const trace = (message) => log('trace', message);
export const debug = (message) => log('debug', message);
export const info = (message) => log('info', message);
export const warn = (message) => log('warn', message);
export const error = (message) => log('error', message);
