// An investigation's map against a fake gateway (jsdom): its location entities from the event
// stream, each one's properties read from the knowledge graph, and the empty state before any.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { cleanup, render, screen, waitFor, within } from '@testing-library/svelte';
import { fakeFetch, frame, sseStream } from '../lib/investigation/testing/fakeFetch.js';
import { parse } from '../lib/router.svelte.js';
import InvestigationMap from './InvestigationMap.svelte';

const ID = 'inv-1';
const BASE = `/api/v1/investigations/${ID}`;
const PARIS_ID = 'location--00000000-0000-5000-8000-000000000002';
const LYON_ID = 'location--00000000-0000-5000-8000-000000000004';

const record = (status) => ({ id: ID, target: 'browser-update.example.com', status });
const event = (id, kind, data) => ({ id, investigation_id: ID, kind, at: '2026-12-01T19:30:10Z', data });

beforeEach(() => { sessionStorage.setItem('bev.key', 'bev_test'); });
afterEach(() => { cleanup(); vi.unstubAllGlobals(); sessionStorage.clear(); });

describe('the map route', () => {
  it('is #/investigations/ID/map', () => {
    expect(parse('#/investigations/inv%201/map')).toEqual({ page: 'map', params: { id: 'inv 1' }, query: {} });
    expect(parse('#/investigations/inv-1/graph').page).toBe('graph');
  });
});

describe('InvestigationMap', () => {
  it("draws the investigation's places as they arrive, with their properties from the graph", async () => {
    const stream = sseStream();
    const gateway = fakeFetch({
      [`GET ${BASE}`]: record('running'),
      [`GET ${BASE}/events`]: stream,
      [`GET /api/v1/graph/entities/${PARIS_ID}`]: { id: PARIS_ID, type: 'location', value: '48.8584,2.2945', tlp: 'clear',
        properties_json: JSON.stringify({ latitude: 48.8584, longitude: 2.2945, name: 'Paris', country: 'FR',
          country_numeric: '250' }) },
      // LYON_ID is not in the graph (404): drawn from its value.
    });
    vi.stubGlobal('fetch', gateway.fetch);
    render(InvestigationMap, { props: { id: ID } });

    expect((await screen.findByTestId('map-empty')).textContent).toMatch(/^No places were found yet/);
    expect(screen.getByRole('link', { name: 'Graph' }).getAttribute('href')).toBe(`#/investigations/${ID}/graph`);

    stream.push(frame(event(1, 'entity', { id: 'domain-name--1', type: 'domain-name', value: 'example.com', evidence: 'ev-1' })));
    stream.push(frame(event(2, 'entity', { id: PARIS_ID, type: 'location', value: '48.8584,2.2945', evidence: 'ev-2' })));
    stream.push(frame(event(3, 'entity', { id: LYON_ID, type: 'location', value: '45.7640,4.8357', evidence: 'ev-2' })));
    stream.push(frame(event(4, 'entity', { type: 'location', value: 'JP', evidence: 'ev-3' })));

    await waitFor(() => expect(screen.getAllByTestId('map-point')).toHaveLength(2));
    const table = within(screen.getByTestId('map-places'));
    await waitFor(() => expect(table.getAllByTestId('map-place')[0].cells[0].textContent.trim()).toBe('Paris'));
    expect(table.getAllByTestId('map-place').map((r) => r.cells[0].textContent.trim()))
      .toEqual(['Paris', '45.7640, 4.8357', 'JP']);
    // Lyon was placed in France by its outline; a bare country code is listed, unshaded without its numeric code.
    await waitFor(() => expect(screen.getByTestId('world-map').dataset.shaded).toBe('France'));
    expect(screen.getByTestId('place-count').textContent).toBe('3 places');
    expect(screen.queryByTestId('map-empty')).toBeNull();
    const looked = gateway.calls.filter((c) => c.url.startsWith('/api/v1/graph/entities/')).map((c) => c.url).sort();
    expect(looked).toEqual([`/api/v1/graph/entities/${PARIS_ID}`, `/api/v1/graph/entities/${LYON_ID}`]);
    await waitFor(() => expect(screen.queryByText(/from the knowledge graph…/)).toBeNull());
  });

  it('says no places were found in a finished investigation without any', async () => {
    const stream = sseStream();
    const gateway = fakeFetch({
      [`GET ${BASE}`]: record('completed'),
      [`GET ${BASE}/events`]: stream,
      [`GET ${BASE}/report`]: { entities: [{ id: 'domain-name--1', type: 'domain-name', value: 'example.com', evidence: [] }],
        relationships: [] },
    });
    vi.stubGlobal('fetch', gateway.fetch);
    render(InvestigationMap, { props: { id: ID } });
    stream.push(frame(event(1, 'done', { status: 'completed' })));
    stream.end();
    await waitFor(() => expect(screen.getByTestId('map-empty').textContent).toBe('No places were found yet.'));
    expect(screen.getByRole('img').getAttribute('aria-label')).toBe('World map: no places to show.');
    expect(screen.getByTestId('place-count').textContent).toBe('0 places');
  });
});
