// An investigation's graph as it grows, for the pages that draw it (the graph and the map): the
// investigation is read once, its events go into `model` as they stream, and its report once it has
// finished (409 means not yet: the `done` event brings it then). Returns a function that stops it.
import { api, follow, ApiError } from '../api.js';

export function followInvestigation(base, model, { onInvestigation, onEvents, onReport, onError, onEnd }) {
  let reportLoaded = false;

  async function loadReport() {
    if (reportLoaded) return;
    reportLoaded = true;
    try {
      model.addReport(await api(`${base}/report`));
      onReport();
    } catch (e) {
      reportLoaded = false;
      if (!(e instanceof ApiError && e.status === 409)) onError(e.message);
    }
  }

  api(base).then((value) => {
    onInvestigation(value);
    if (value.status !== 'queued' && value.status !== 'running') loadReport();
  }).catch((e) => onError(e.message));

  const stream = follow(`${base}/events`, {
    onEvent: ({ event, data }) => {
      if (event === 'stream_error') { onError(data?.error ?? 'the event stream broke'); return; }
      if (model.addEvent(data)) onEvents();
      if (data?.kind === 'done') { onEnd(); loadReport(); }
    },
    onError: (e) => {
      onError(e.message);
      if (e instanceof ApiError) onEnd(); // refused: follow() does not retry those
    },
    onEnd,
  });
  return () => stream.stop();
}
