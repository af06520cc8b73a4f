import { describe, it, expect, vi, beforeEach, afterEach } from 'vitest';
import { render, waitFor, fireEvent, cleanup } from '@testing-library/svelte';
import Graph from '../../pages/Graph.svelte';

const BASE = '/api/v1/investigations/inv-1';
const DOMAIN_ID = 'domain-name--51310ede-79de-5d75-908b-2ff639f52b97';
const IP_ID = 'ipv4-addr--39090fdc-366e-571f-ab5b-d05e2918f88f';
const OTHER_ID = 'domain-name--11111111-1111-5111-8111-111111111111';

const json = (body, status = 200) => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
const sse = (events) => new Response(
  events.map((e, i) => `id: ${i + 1}\nevent: ${e.kind}\ndata: ${JSON.stringify({ id: i + 1, ...e })}\n\n`).join(''),
  { headers: { 'Content-Type': 'text/event-stream' } });

// One entity with the graph's id, one recorded without (as before the swarm sent ids).
const EVENTS = [
  { kind: 'entity', data: { id: DOMAIN_ID, type: 'domain-name', value: 'browser-update.example.com', evidence: 'ev-1' } },
  { kind: 'entity', data: { type: 'ipv4-addr', value: '203.0.113.9', evidence: 'ev-1' } },
  { kind: 'relation', data: { source: 'browser-update.example.com', source_id: DOMAIN_ID, type: 'resolves-to',
    target: '203.0.113.9', evidence: 'ev-1' } },
];

beforeEach(() => {
  vi.stubGlobal('fetch', vi.fn(async (url) => {
    if (url === BASE) return json({ id: 'inv-1', target: 'browser-update.example.com', status: 'running' });
    if (url === `${BASE}/events`) return sse(EVENTS);
    if (url.startsWith('/api/v1/evidence/')) return json({ id: 'ev-1', kind: 'dns', collector: 'dns', uri: '', content: '' });
    if (url.startsWith('/api/v1/graph/neighborhood')) {
      return json({
        entities: [{ id: DOMAIN_ID, type: 'domain-name', value: 'browser-update.example.com', properties_json: '{}' },
          { id: IP_ID, type: 'ipv4-addr', value: '203.0.113.9', properties_json: '{}' },
          { id: OTHER_ID, type: 'domain-name', value: 'other.example', properties_json: '{}' }],
        relations: [{ id: 'relationship--1', source_id: DOMAIN_ID, target_id: IP_ID, type: 'resolves-to',
          confidence: 90, evidence_ids: [] },
        { id: 'relationship--2', source_id: OTHER_ID, target_id: IP_ID, type: 'resolves-to',
          confidence: 70, evidence_ids: [] }],
        truncated: false,
      });
    }
    return json({ error: 'not found', code: 'NOT_FOUND' }, 404);
  }));
});

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

describe('Graph page', () => {
  it('expands a node by the id the server sent and explains why a node without one cannot be', async () => {
    const { getByTestId, getByRole, findByRole } = render(Graph, { id: 'inv-1' });
    const graph = getByTestId('graph');
    await waitFor(() => expect(graph.dataset.nodeCount).toBe('2'));
    expect(graph.dataset.edgeCount).toBe('1');

    await fireEvent.click(getByRole('button', { name: '203.0.113.9' }));
    let expand = getByTestId('expand');
    expect(expand.disabled).toBe(true);
    const why = document.getElementById(expand.getAttribute('aria-describedby'));
    expect(why.textContent).toMatch(/No knowledge-graph id is known/);
    expect(expand.title).toBe(why.textContent);
    expect(getByTestId('graph-evidence').textContent).toContain('none known');

    await fireEvent.click(getByRole('button', { name: 'browser-update.example.com' }));
    expand = getByTestId('expand');
    expect(expand.disabled).toBe(false);
    expect(expand.hasAttribute('aria-describedby')).toBe(false);
    expect(getByTestId('graph-evidence').textContent).toContain(DOMAIN_ID);
    await fireEvent.click(expand);
    await findByRole('button', { name: 'Expand neighbourhood' });
    const asked = fetch.mock.calls.map(([url]) => url).find((url) => url.startsWith('/api/v1/graph/neighborhood'));
    expect(new URL(asked, 'http://x').searchParams.get('entity_id')).toBe(DOMAIN_ID);
    await waitFor(() => expect(graph.dataset.nodeCount).toBe('3'));
    expect(graph.dataset.edgeCount).toBe('2');
    expect(getByTestId('graph-evidence').textContent).toMatch(/Added 1 entity and 1 relation\./);

    // The id-less node of the same type and value took the graph's id: it can be expanded now.
    await fireEvent.click(getByRole('button', { name: '203.0.113.9' }));
    expect(getByTestId('expand').disabled).toBe(false);
    expect(getByTestId('graph-evidence').textContent).toContain(IP_ID);
  });
});
