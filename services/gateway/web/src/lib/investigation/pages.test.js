// The investigation pages against a fake gateway (jsdom): what they ask for and what they show,
// plus an axe-core pass over each (layout-dependent rules such as contrast need a real browser).
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import axe from 'axe-core';
import { fakeFetch, frame, sseStream } from './testing/fakeFetch.js';
import Investigation from '../../pages/Investigation.svelte';
import Investigations from '../../pages/Investigations.svelte';
import NewInvestigation from '../../pages/NewInvestigation.svelte';
import Report from '../../pages/Report.svelte';
import Evidence from '../../pages/Evidence.svelte';

vi.mock('../avatar/AvatarPanel.svelte', async () => ({ default: (await import('./testing/Empty.svelte')).default }));

const ID = 'inv-1';
const BASE = `/api/v1/investigations/${ID}`;

function record(overrides = {}) {
  return {
    id: ID, target: 'browser-update.example.com', target_type: 'domain', mode: 'hybrid', status: 'running',
    phase: 'ingestion', progress: 0.05, created_at: '2026-12-01T19:30:09Z', started_at: '2026-12-01T19:30:09Z',
    finished_at: null, usage: { tokens: 0, tool_calls: 0, wall_s: 0 },
    budget: { max_tool_calls: 200, max_tokens: 200000, max_wall_s: 900, max_depth: 3 },
    scope: { allow: ['example.com'], opsec: false }, tlp: 'clear', seeds: [], error: null, report: null,
    ...overrides,
  };
}

function event(id, kind, data) {
  return { id, investigation_id: ID, kind, at: '2026-12-01T19:30:10Z', data };
}

async function seriousViolations(container) {
  const result = await axe.run(container, { rules: { 'color-contrast': { enabled: false } } });
  return result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
}

beforeEach(() => {
  sessionStorage.setItem('bev.key', 'bev_test');
  location.hash = '';
});

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

describe('Investigation (live)', () => {
  it('appends streamed events and follows phase, agents, budget and the end', async () => {
    const stream = sseStream();
    let current = record();
    const gateway = fakeFetch({
      [`GET ${BASE}`]: () => current,
      [`GET ${BASE}/events`]: stream,
      'GET /api/v1/agents': { roles: [], agents: [], next_cursor: '' },
    });
    vi.stubGlobal('fetch', gateway.fetch);
    const { container } = render(Investigation, { props: { id: ID } });

    await screen.findByText('browser-update.example.com');
    expect(screen.getByTestId('status').dataset.status).toBe('running');
    expect(screen.queryByTestId('report-link')).toBeNull();

    stream.push(frame(event(1, 'phase', { phase: 'ingestion', progress: 0.05 })));
    stream.push(frame(event(2, 'tool_call', { agent: 'worker', role: 'worker', tool: 'collectors.Collect',
      args: { collector: 'dns', target: 'browser-update.example.com' }, key: 'k' })));
    await waitFor(() => expect(screen.getAllByTestId('event')).toHaveLength(2));
    const call = screen.getAllByTestId('event')[1];
    expect(call.dataset.kind).toBe('tool_call');
    expect(call.dataset.eventId).toBe('2');
    expect(call.textContent).toContain('worker → collectors.Collect collector=dns');
    expect(screen.getByTestId('agents').textContent).toContain('calling collectors.Collect');

    stream.push(frame(event(3, 'evidence', { evidence: 'ev-1', kind: 'observation', uri: 'dns://x', collector: 'dns' })));
    stream.push(frame(event(4, 'budget', { tokens: 5000, max_tokens: 200000 })));
    current = record({ phase: 'hypotheses', progress: 0.5 });
    stream.push(frame(event(5, 'phase', { phase: 'hypotheses', progress: 0.5 })));
    await waitFor(() => expect(screen.getByTestId('phase').textContent).toBe('hypotheses'));
    expect(container.querySelector('[role=progressbar][aria-label="Investigation progress"]')
      .getAttribute('aria-valuenow')).toBe('50');
    expect(screen.getAllByTestId('event')[2].querySelector('a').getAttribute('href')).toBe('#/evidence/ev-1');
    expect(screen.getByTestId('budget').textContent).toContain('5,000 / 200,000');

    // a reconnect replays from the last id: an overlap adds nothing
    stream.push(frame(event(5, 'phase', { phase: 'hypotheses', progress: 0.5 })));
    current = record({ status: 'completed', phase: 'synthesis', progress: 1, usage: { tokens: 16000, tool_calls: 47, wall_s: 196 } });
    stream.push(frame(event(6, 'done', { status: 'completed', reason: '', citation_integrity: 1 })));
    stream.end();
    await waitFor(() => expect(screen.getByTestId('status').dataset.status).toBe('completed'));
    expect(screen.getAllByTestId('event')).toHaveLength(6);
    expect(screen.getByTestId('report-link').getAttribute('href')).toBe(`#/investigations/${ID}/report`);
    expect(screen.getByTestId('graph-link').getAttribute('href')).toBe(`#/investigations/${ID}/graph`);
    expect(screen.getByTestId('cancel').disabled).toBe(true);
    await waitFor(() => expect(screen.getByTestId('budget').textContent).toContain('47 / 200'));
    expect(await seriousViolations(container)).toEqual([]);
  });

  it('filters the timeline by kind', async () => {
    const stream = sseStream();
    vi.stubGlobal('fetch', fakeFetch({
      [`GET ${BASE}`]: record(), [`GET ${BASE}/events`]: stream,
      'GET /api/v1/agents': { roles: [], agents: [], next_cursor: '' },
    }).fetch);
    render(Investigation, { props: { id: ID } });
    stream.push(frame(event(1, 'phase', { phase: 'ingestion', progress: 0.05 })) + frame(event(2, 'warning',
      { agent: 'monitor', warning: 'prompt_injection', message: 'treated as data' })));
    await waitFor(() => expect(screen.getAllByTestId('event')).toHaveLength(2));
    await fireEvent.change(screen.getByLabelText('Show'), { target: { value: 'warning' } });
    expect(screen.getAllByTestId('event').map((li) => li.dataset.kind)).toEqual(['warning']);
  });

  it('cancels a running investigation', async () => {
    const stream = sseStream();
    const gateway = fakeFetch({
      [`GET ${BASE}`]: record(), [`GET ${BASE}/events`]: stream,
      [`DELETE ${BASE}`]: record({ status: 'cancelled' }),
      'GET /api/v1/agents': { roles: [], agents: [], next_cursor: '' },
    });
    vi.stubGlobal('fetch', gateway.fetch);
    render(Investigation, { props: { id: ID } });
    await screen.findByText('browser-update.example.com');
    await fireEvent.click(screen.getByTestId('cancel'));
    await waitFor(() => expect(screen.getByTestId('status').dataset.status).toBe('cancelled'));
    expect(gateway.calls.some((c) => c.method === 'DELETE')).toBe(true);
  });
});

describe('Investigations', () => {
  it('lists, filters by status through the route and pages with More', async () => {
    const gateway = fakeFetch({
      'GET /api/v1/investigations': (init, url) => {
        const query = new URL(url, 'http://x').searchParams;
        if (query.get('cursor')) return { investigations: [record({ id: 'inv-2', target: 'second.example' })], next_cursor: '' };
        if (query.get('status') === 'failed') return { investigations: [], next_cursor: '' };
        return { investigations: [record({ status: 'completed' })], next_cursor: 'c1' };
      },
    });
    vi.stubGlobal('fetch', gateway.fetch);
    const { container } = render(Investigations, { props: { query: {} } });
    await waitFor(() => expect(screen.getAllByTestId('investigation-row')).toHaveLength(1));
    const row = screen.getAllByTestId('investigation-row')[0];
    expect(row.dataset.status).toBe('completed');
    expect(row.querySelector('a').getAttribute('href')).toBe(`#/investigations/${ID}`);

    await fireEvent.click(screen.getByTestId('more'));
    await waitFor(() => expect(screen.getAllByTestId('investigation-row')).toHaveLength(2));

    await fireEvent.input(screen.getByLabelText('Target contains'), { target: { value: 'second' } });
    expect(screen.getAllByTestId('investigation-row')).toHaveLength(1);

    await fireEvent.change(container.querySelector('#status-filter'), { target: { value: 'failed' } });
    await waitFor(() => expect(screen.queryAllByTestId('investigation-row')).toHaveLength(0));
    expect(gateway.calls.at(-1).url).toContain('status=failed');
    expect(screen.getByTestId('new-investigation').getAttribute('href')).toBe('#/investigations/new');
    expect(await seriousViolations(container)).toEqual([]);
  });
});

describe('NewInvestigation', () => {
  it('posts the form and opens the investigation', async () => {
    let sent = null;
    vi.stubGlobal('fetch', fakeFetch({
      'POST /api/v1/investigations': (init) => { sent = JSON.parse(init.body); return { status: 202, body: record({ id: 'new-1' }) }; },
    }).fetch);
    const { container } = render(NewInvestigation);
    await fireEvent.input(container.querySelector('#target'), { target: { value: 'browser-update.example.com' } });
    await fireEvent.change(container.querySelector('#mode'), { target: { value: 'democratic' } });
    await fireEvent.input(container.querySelector('#max-depth'), { target: { value: '2' } });
    await fireEvent.input(container.querySelector('#allow'), { target: { value: 'example.com\nexample.net' } });
    await fireEvent.click(container.querySelector('#opsec'));
    await fireEvent.change(container.querySelector('#tlp'), { target: { value: 'amber' } });
    await fireEvent.click(screen.getByTestId('start-investigation'));
    await waitFor(() => expect(location.hash).toBe('#/investigations/new-1'));
    expect(sent).toEqual({
      target: 'browser-update.example.com', mode: 'democratic', tlp: 'amber',
      scope: { allow: ['example.com', 'example.net'], opsec: true }, seeds: [], budget: { max_depth: 2 },
    });
    expect(await seriousViolations(container)).toEqual([]);
  });

  it("shows the gateway's refusal", async () => {
    vi.stubGlobal('fetch', fakeFetch({
      'POST /api/v1/investigations': { status: 400, body: { error: 'seed http://x/ is outside the scope', code: 'INVALID_ARGUMENT' } },
    }).fetch);
    const { container } = render(NewInvestigation);
    await fireEvent.input(container.querySelector('#target'), { target: { value: 'a.example' } });
    await fireEvent.click(screen.getByTestId('start-investigation'));
    expect((await screen.findByRole('alert')).textContent).toBe('seed http://x/ is outside the scope');
  });
});

describe('Report', () => {
  const graphText = `${'the knowledge graph holds:\n'.padEnd(420, '.')}\ntelemetry-sync.example.org resolves-to 203.0.113.66`;
  const report = {
    investigation: { id: ID, target: 'browser-update.example.com', target_type: 'domain', mode: 'hybrid',
      status: 'completed', tlp: 'clear', created_at: '2026-12-01T19:30:09Z', finished_at: null },
    summary: 'Two findings.\nConsensus on H1.',
    entities: [{ id: 'domain-name--1', type: 'domain-name', value: 'telemetry-sync.example.org', confidence: 90,
      evidence: ['ev-short'] }],
    relationships: [{ source: 'telemetry-sync.example.org', target: '203.0.113.66', type: 'resolves-to', confidence: 90,
      evidence: ['ev-graph'] }],
    hypotheses: [
      { id: 'H2', statement: 'Second.', confidence: 0.4, proposed_by: 'crypto', votes: [{ agent: 'crypto', rank: 2 }],
        supporting: ['ev-short'], contradicting: [], quotes: [{ evidence: 'ev-short', text: 'resolves to' }], counterfactual: '' },
      { id: 'H1', statement: 'First.', confidence: 0.7, proposed_by: 'infrastructure', votes: [{ agent: 'crypto', rank: 1 }],
        supporting: ['ev-graph'], contradicting: [],
        quotes: [{ evidence: 'ev-graph', text: 'telemetry-sync.example.org resolves-to 203.0.113.66' }], counterfactual: 'If not.' },
    ],
    consensus: { rule: 'borda', winner: 'H1', scores: { H1: 2, H2: 1 }, rankings: { crypto: ['H1', 'H2'], skeptic: ['H2', 'H1'] } },
    dissent: [{ agent: 'skeptic', preferred: 'H2', reason: 'thin evidence' }],
    mode_switches: [{ from: 'hierarchical', to: 'democratic', reason: 'low confidence' }],
    evidence: [
      { id: 'ev-short', kind: 'observation', uri: 'dns://x', collector: 'dns', collected_at: '2026-12-01T19:30:10Z',
        tlp: 'clear', excerpt: '😀 telemetry-sync.example.org resolves to 203.0.113.66' },
      { id: 'ev-graph', kind: 'graph', uri: 'graph:x', collector: 'collectors.Neighborhood',
        collected_at: '2026-12-01T19:30:10Z', tlp: 'amber', excerpt: graphText.slice(0, 400) },
    ],
    warnings: [], unsupported: [], usage: { tokens: 100, tool_calls: 3, wall_s: 12 }, citation_integrity: 1,
  };

  it('shows hypotheses, votes and dissent, with citations that carry their offsets', async () => {
    const gateway = fakeFetch({
      [`GET ${BASE}/report`]: report,
      'GET /api/v1/evidence/ev-graph': { id: 'ev-graph', content: graphText },
    });
    vi.stubGlobal('fetch', gateway.fetch);
    const { container } = render(Report, { props: { id: ID } });
    await waitFor(() => expect(screen.getAllByTestId('hypothesis')).toHaveLength(2));
    expect(screen.getAllByTestId('hypothesis').map((h) => h.dataset.hypothesisId)).toEqual(['H1', 'H2']);
    expect(screen.getByTestId('votes').textContent).toContain('skeptic');
    expect(screen.getByTestId('dissent').textContent).toContain('thin evidence');

    // in the excerpt: the code-point offsets of the value after an emoji (Python counts it as one)
    const entity = screen.getByTestId('entities').querySelector('[data-testid=citation]');
    expect(entity.dataset.evidenceId).toBe('ev-short');
    expect(entity.getAttribute('href')).toBe('#/evidence/ev-short?start=2&end=28');
    // past the 400-character excerpt: placed once the whole item is fetched
    const quoteStart = graphText.indexOf('telemetry-sync');
    await waitFor(() => {
      const rel = screen.getByTestId('relationships').querySelector('[data-testid=citation]');
      expect(rel.getAttribute('href')).toBe(
        `#/evidence/ev-graph?start=${quoteStart}&end=${quoteStart + 26}&spans=${quoteStart}-${quoteStart + 26},`
        + `${quoteStart + 39}-${quoteStart + 51}`);
    });
    expect(gateway.calls.filter((c) => c.url.startsWith('/api/v1/evidence/')).map((c) => c.url))
      .toEqual(['/api/v1/evidence/ev-graph']);
    for (const name of ['download-md', 'download-json', 'download-stix']) expect(screen.getByTestId(name)).toBeTruthy();
    expect(await seriousViolations(container)).toEqual([]);
  });

  it('says when the investigation has not finished', async () => {
    vi.stubGlobal('fetch', fakeFetch({
      [`GET ${BASE}/report`]: { status: 409, body: { error: 'the investigation has not finished', code: 'FAILED_PRECONDITION' } },
    }).fetch);
    render(Report, { props: { id: ID } });
    expect((await screen.findByRole('alert')).textContent).toBe('the investigation has not finished');
  });
});

describe('Evidence', () => {
  it('marks the cited spans by code point', async () => {
    vi.stubGlobal('fetch', fakeFetch({
      'GET /api/v1/evidence/ev-1': { id: 'ev-1', investigation_id: ID, kind: 'observation', uri: 'dns://x',
        collector: 'dns', collected_at: '2026-12-01T19:30:10Z', tlp: 'amber', content: 'a😀b😀cd and more',
        document_id: null, start: 0, end: 0 },
    }).fetch);
    const { container } = render(Evidence, { props: { id: 'ev-1', query: { start: '2', end: '5', spans: '2-5,7-10' } } });
    await waitFor(() => expect(screen.getAllByTestId('cited')).toHaveLength(2));
    expect(screen.getAllByTestId('cited').map((m) => m.textContent)).toEqual(['b😀c', 'and']);
    expect(screen.getByTestId('evidence-content').textContent).toBe('a😀b😀cd and more');
    expect(screen.getByTestId('evidence-uri').textContent).toBe('dns://x');
    expect(await seriousViolations(container)).toEqual([]);
  });

  it('shows the text plain without offsets', async () => {
    vi.stubGlobal('fetch', fakeFetch({
      'GET /api/v1/evidence/ev-2': { id: 'ev-2', investigation_id: ID, kind: 'observation', uri: '', collector: 'dns',
        collected_at: null, tlp: 'clear', content: 'plain', document_id: null, start: 0, end: 0 },
    }).fetch);
    render(Evidence, { props: { id: 'ev-2', query: {} } });
    await waitFor(() => expect(screen.getByTestId('evidence-content').textContent).toBe('plain'));
    expect(screen.queryAllByTestId('cited')).toHaveLength(0);
  });
});
