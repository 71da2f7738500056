// A test plugin for the JavaScript SDK (tests/test_http_js.py): every helper of
// plugins/sdk/js/lightcell.js, answered back in headers so the test can check
// the shapes componentize-js converts.
//
// request-headers: with `x-answer: N`, respond(N, [['x-from', 'probe']], 'answered')
// (N outside 200..599 throws: a trap); else modify: set x-first / x-all (first and
// every `x-multi` value as text, '|'-joined), x-raw-text ('undefined' when `x-raw`
// is not UTF-8), x-raw-bytes (`x-raw`'s bytes as they came), x-path (attribute
// request.path), x-config (the config's entries as JSON); append x-app: a, X-App: b
// (bytes); remove X-Gone.
// request-body: UTF-8 text upper-cased; a body that is not UTF-8: 415 with a JSON body.

import {
  attribute, bytes, configEntries, continue_, header, headerValues, headerValuesBytes,
  modify, phases, respond, respondJson, textOrUndefined,
} from '../../plugins/sdk/js/lightcell.js';

let entries = [];

export function wantedPhases() {
  return phases('request-headers', 'request-body');
}

export function onOpen(listener, config) {
  entries = configEntries(config);
}

export function onRequestHeaders(headers, attributes, endOfStream) {
  const answer = header(headers, 'X-Answer');
  if (answer !== undefined) return respond(Number(answer), [['x-from', 'probe']], 'answered');
  return modify({
    set: {
      'x-first': header(headers, 'X-Multi') ?? 'none',
      'x-all': headerValues(headers, 'x-multi').join('|'),
      'x-raw-text': String(header(headers, 'x-raw')),
      'x-raw-bytes': headerValuesBytes(headers, 'x-raw')[0] ?? bytes(''),
      'x-path': attribute(attributes, 'request.path') ?? 'none',
      'x-config': JSON.stringify(entries),
    },
    append: [['x-app', 'a'], { name: 'X-App', value: new Uint8Array([98]) }],
    remove: ['X-Gone'],
  });
}

export function onRequestBody(body, endOfStream) {
  const text = textOrUndefined(body);
  if (text === undefined) return respondJson(415, { error: 'not UTF-8' });
  return modify({ body: text.toUpperCase() });
}

export const onRequestTrailers = () => continue_();
export const onResponseHeaders = () => continue_();
export const onResponseBody = () => continue_();
export const onResponseTrailers = () => continue_();
export function onClose() {}
