// jsonpatch: rewrites JSON request bodies (an http-filter plugin in JavaScript).
//
// Config (entries separated by ';', repeatable):
//   set=PATH:VALUE[,PATH:VALUE...]  set a field (VALUE is JSON if it parses as
//                                   JSON, e.g. 1, true, null, "a b"; else a string)
//   drop=PATH[,PATH...]             remove a field if present
//   max=BYTES                       largest body accepted (default 256 KiB; over: 413)
//   log=on                          log each rewrite and refusal (needs grant `log`)
// PATH is a dotted path into nested objects (`meta.source`); `set` creates the
// missing objects on the way. Drops apply first, then sets, in config order.
// The body is gathered whole, whatever Envoy's body mode: pieces before the
// last are held back (forwarded as nothing) and the rewritten body goes out with
// the last one. A body that is not a JSON object (not UTF-8, not JSON, or an
// array or scalar) is answered at once with 400 and never reaches the upstream.
// A request without a body (GET) is not touched. Bad config: on-open throws (a fault).
// Memory: SpiderMonkey starts at ~9 MiB and aborts (a trap) when the sandbox's
// cap stops its heap from growing; rewriting a 256 KiB body needs a cap of
// 32 MiB, 512 KiB about 64 MiB (plugins/sdk/js/README.md).

import {
  configEntries, continue_, info, modify, parseJson, phases, respondJson, jsonBytes, warn,
} from '../../sdk/js/lightcell.js';

const MAX_BODY_LIMIT = 4 * 1024 * 1024; // a rewrite may grow the body; the host caps output at 8 MiB

const DEFAULT_MAX = 256 * 1024;

let rules = { drops: [], sets: [], max: DEFAULT_MAX, log: false };
let pieces = []; // this request's body so far (module state: one instance per request)
let held = 0;

function parsePath(text) {
  const path = text.split('.');
  if (path.some((p) => p === '')) throw new Error(`jsonpatch: bad path ${JSON.stringify(text)}`);
  return path;
}

function parseValue(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function parseConfig(config) {
  const out = { drops: [], sets: [], max: DEFAULT_MAX, log: false };
  for (const [key, value] of configEntries(config)) {
    if (key === 'set') {
      for (const item of value.split(',')) {
        const colon = item.indexOf(':');
        if (colon < 0) throw new Error(`jsonpatch: set needs PATH:VALUE, got ${JSON.stringify(item)}`);
        out.sets.push([parsePath(item.slice(0, colon).trim()), parseValue(item.slice(colon + 1).trim())]);
      }
    } else if (key === 'drop') {
      for (const item of value.split(',')) out.drops.push(parsePath(item.trim()));
    } else if (key === 'max') {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0 || n > MAX_BODY_LIMIT) {
        throw new Error(`jsonpatch: max must be an integer in 0..${MAX_BODY_LIMIT}, got ${JSON.stringify(value)}`);
      }
      out.max = n;
    } else if (key === 'log') {
      if (value !== 'on' && value !== 'off') throw new Error('jsonpatch: log must be on or off');
      out.log = value === 'on';
    } else {
      throw new Error(`jsonpatch: unknown config key ${JSON.stringify(key)}`);
    }
  }
  return out;
}

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

// Own properties only, defined rather than assigned: a body or config key such
// as "__proto__" is an ordinary field here, never the object's prototype.
function own(obj, key) {
  return Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined;
}

function define(obj, key, value) {
  Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
}

function setPath(obj, path, value) {
  let node = obj;
  for (const key of path.slice(0, -1)) {
    if (!isObject(own(node, key))) define(node, key, {});
    node = own(node, key);
  }
  define(node, path[path.length - 1], value);
}

function dropPath(obj, path) {
  let node = obj;
  for (const key of path.slice(0, -1)) {
    node = own(node, key);
    if (!isObject(node)) return false;
  }
  const last = path[path.length - 1];
  if (!Object.prototype.hasOwnProperty.call(node, last)) return false;
  delete node[last];
  return true;
}

function concat(chunks, total) {
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function refuse(status, message) {
  if (rules.log) warn(`jsonpatch: ${status} ${message}`);
  return respondJson(status, { error: message });
}

export function wantedPhases() {
  return phases('request-body');
}

export function onOpen(listener, config) {
  rules = parseConfig(config);
}

export function onRequestBody(body, endOfStream) {
  held += body.length;
  if (held > rules.max) return refuse(413, `request body over ${rules.max} bytes`);
  pieces.push(body);
  if (!endOfStream) return modify({ body: '' }); // held back until the last piece
  const whole = pieces.length === 1 ? pieces[0] : concat(pieces, held);
  pieces = [];
  const parsed = parseJson(whole);
  if (!parsed.ok) return refuse(400, 'request body is not JSON');
  if (!isObject(parsed.value)) return refuse(400, 'request body is not a JSON object');
  let dropped = 0;
  for (const path of rules.drops) dropped += dropPath(parsed.value, path) ? 1 : 0;
  for (const [path, value] of rules.sets) setPath(parsed.value, path, value);
  if (rules.log) info(`jsonpatch: ${rules.sets.length} set, ${dropped} dropped, ${held} bytes in`);
  if (dropped === 0 && rules.sets.length === 0) {
    return whole === body ? continue_() : modify({ body: whole }); // unchanged
  }
  return modify({ body: jsonBytes(parsed.value) });
}

export function onClose() {}

// The world requires every hook; these are never called (not in wantedPhases).
export const onRequestHeaders = () => continue_();
export const onRequestTrailers = () => continue_();
export const onResponseHeaders = () => continue_();
export const onResponseBody = () => continue_();
export const onResponseTrailers = () => continue_();
