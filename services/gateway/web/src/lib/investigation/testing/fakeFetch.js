// A fetch for page tests: JSON answers by path, and SSE streams the test writes to as it goes.

function json(status, body) {
  return { ok: status < 400, status, statusText: '', json: async () => body, text: async () => JSON.stringify(body) };
}

/** An SSE body: push(text) delivers a chunk, end() closes it. */
export function sseStream() {
  const chunks = [];
  let wake = null;
  let ended = false;
  const encoder = new TextEncoder();
  return {
    push(text) { chunks.push(encoder.encode(text)); wake?.(); },
    end() { ended = true; wake?.(); },
    response: {
      ok: true, status: 200, statusText: '',
      body: {
        getReader: () => ({
          async read() {
            while (!chunks.length && !ended) await new Promise((resolve) => { wake = resolve; });
            return chunks.length ? { value: chunks.shift(), done: false } : { value: undefined, done: true };
          },
        }),
      },
    },
  };
}

/** routes: {'GET /path': body | (init) => body | {status, body} | stream}; unknown paths answer 404. */
export function fakeFetch(routes) {
  const calls = [];
  const fetch = async (url, init = {}) => {
    const method = init.method ?? 'GET';
    const path = String(url).split('?')[0];
    calls.push({ method, url: String(url), init });
    let answer = routes[`${method} ${path}`];
    if (typeof answer === 'function') answer = answer(init, url);
    if (answer === undefined) return json(404, { error: `no route ${method} ${path}`, code: 'NOT_FOUND' });
    if (answer.response) return answer.response;
    if (answer.status && 'body' in answer) return json(answer.status, answer.body);
    return json(200, answer);
  };
  return { fetch, calls };
}

/** One SSE frame of an investigation event. */
export function frame(event) {
  return `id: ${event.id}\nevent: ${event.kind}\ndata: ${JSON.stringify(event)}\n\n`;
}
