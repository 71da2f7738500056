// tagjson: adds "tagged": true to a JSON object request body; anything else gets 400.
import { continue_, modify, parseJson, jsonBytes, respondJson, phases } from '../../sdk/js/lightcell.js';

let pieces = []; // module state lives for one request: each request has its own sandbox

export const wantedPhases = () => phases('request-body');
export function onOpen(listener, config) {}
export function onClose() {}

export function onRequestBody(body, endOfStream) {
  pieces.push(body.slice());
  if (!endOfStream) return modify({ body: '' }); // hold pieces back until the last one
  const whole = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  pieces.reduce((at, p) => (whole.set(p, at), at + p.length), 0);
  const parsed = parseJson(whole);
  if (!parsed.ok || typeof parsed.value !== 'object' || parsed.value === null || Array.isArray(parsed.value)) {
    return respondJson(400, { error: 'expected a JSON object' });
  }
  return modify({ body: jsonBytes({ ...parsed.value, tagged: true }) });
}

export const onRequestHeaders = () => continue_();
export const onRequestTrailers = () => continue_();
export const onResponseHeaders = () => continue_();
export const onResponseBody = () => continue_();
export const onResponseTrailers = () => continue_();
