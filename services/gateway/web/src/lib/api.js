// The gateway's API from the browser. The key lives in sessionStorage only: it is gone when the tab
// closes, and no other tab or site can read it.

const KEY = 'bev.key';

export function getKey() {
  return sessionStorage.getItem(KEY) ?? '';
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
}

/** An HTTP error with the gateway's one-line message (`{"error": ..., "code": ...}`). */
export class ApiError extends Error {
  constructor(status, message, code = '') {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = '';
  try {
    const body = await response.json();
    if (typeof body.error === 'string') message = body.error;
    else if (body.error?.message) message = body.error.message;
    else if (typeof body.detail === 'string') message = body.detail;
    code = body.code ?? '';
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) onUnauthorized(message);
  return new ApiError(response.status, message, code);
}

let unauthorizedHandler = () => {};

/** What to do when the gateway says the key is no good (App: back to sign-in with the message). */
export function setUnauthorizedHandler(handler) {
  unauthorizedHandler = handler;
}

function onUnauthorized(message) {
  unauthorizedHandler(message);
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

/**
 * Calls the gateway: `api('/api/v1/investigations', {method: 'POST', body: {...}})`.
 * A plain object body goes as JSON, FormData as multipart, a Blob (a File) or ArrayBuffer as its raw
 * bytes (application/octet-stream). Returns parsed JSON, or the text for non-JSON answers
 * (`as: 'text'`), or the Response itself (`as: 'response'`).
 */
export async function api(path, { method = 'GET', body, query, as = 'json', signal } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null || v === '') continue;
      for (const item of Array.isArray(v) ? v : [v]) params.append(k, String(item));
    }
    const qs = params.toString();
    if (qs) url += (url.includes('?') ? '&' : '?') + qs;
  }
  const init = { method, headers: headers(), signal };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body instanceof Blob || body instanceof ArrayBuffer) {
    init.body = body;
    init.headers['Content-Type'] = 'application/octet-stream';
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(url, init);
  if (!response.ok) throw await failure(response);
  if (as === 'response') return response;
  if (as === 'text') return response.text();
  if (response.status === 204) return null;
  return response.json();
}

/** Parses Server-Sent Events from a text stream; calls onEvent({id, event, data}) per event. */
export function sseParser(onEvent) {
  let buffer = '';
  let current = { id: '', event: 'message', data: [] };
  return (chunk) => {
    buffer += chunk;
    let newline;
    while ((newline = buffer.search(/\r?\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer[newline] === '\r' ? 2 : 1));
      if (line === '') {
        if (current.data.length) {
          onEvent({ id: current.id, event: current.event, data: current.data.join('\n') });
        }
        current = { id: current.id, event: 'message', data: [] };
        continue;
      }
      if (line.startsWith(':')) continue; // a keep-alive comment
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') current.data.push(value);
      else if (field === 'event') current.event = value;
      else if (field === 'id') current.id = value;
    }
  };
}

/**
 * Follows an SSE route with the key in the Authorization header (EventSource cannot send one).
 * Reconnects after a dropped stream from the last event id; `stop()` ends it. onEvent gets
 * {id, event, data} with data parsed as JSON.
 */
export function follow(path, { onEvent, onError = () => {}, onEnd = () => {}, after = '' } = {}) {
  const controller = new AbortController();
  let lastId = after;
  let stopped = false;
  const run = async () => {
    while (!stopped) {
      try {
        const response = await fetch(path, {
          headers: headers(lastId ? { 'Last-Event-ID': String(lastId), Accept: 'text/event-stream' }
            : { Accept: 'text/event-stream' }),
          signal: controller.signal,
        });
        if (!response.ok) {
          onError(await failure(response));
          return;
        }
        const decoder = new TextDecoder();
        const parse = sseParser((raw) => {
          if (raw.id) lastId = raw.id;
          let data = raw.data;
          try { data = JSON.parse(raw.data); } catch { /* keep the text */ }
          onEvent({ id: raw.id, event: raw.event, data });
        });
        const reader = response.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parse(decoder.decode(value, { stream: true }));
        }
        onEnd();
        return; // the server ends the stream after the last event
      } catch (error) {
        if (stopped || error.name === 'AbortError') return;
        onError(error);
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  };
  run();
  return { stop() { stopped = true; controller.abort(); } };
}

/**
 * A WebSocket to the gateway. Browsers cannot set headers on one, so the key travels as the
 * second of two subprotocols, `bev.bearer` and the key; the gateway answers with `bev.bearer`.
 */
export function socket(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return new WebSocket(`${scheme}//${location.host}${path}`, ['bev.bearer', getKey()]);
}

/** Saves a fetched body as a download named `filename`. */
export async function download(path, filename) {
  const response = await api(path, { as: 'response' });
  const blob = await response.blob();
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}
