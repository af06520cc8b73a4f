// The fleet page against a fake gateway (jsdom): instances, and the incidents monitoring correlated
// with their self-healing actions; an unavailable incident list leaves the instances showing.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { cleanup, render, screen, waitFor } from '@testing-library/svelte';
import { fakeFetch } from '../lib/investigation/testing/fakeFetch.js';
import Fleet from './Fleet.svelte';

const SERVICES = {
  status: 'STATUS_SERVING', missing: [], next_cursor: '',
  instances: [{ service: 'avatar', instance: 'a1', node: 'local', status: 'STATUS_SERVING', uptime_s: 12,
                requests: '3', errors: '0', rpc_rate: 0.1, checks: [] }],
};

const INCIDENT = {
  id: '5c1f0e9a2b7d', status: 'resolved', root: 'avatar', node: 'local', severity: 'critical',
  summary: 'avatar on local: InstanceDown', opened_at: 1796170000.2, resolved_at: 1796170014.6, affected: [],
  alerts: [], actions: [{ kind: 'restart', target: 'avatar', node: 'local', outcome: 'done', error: '' }],
};

beforeEach(() => { sessionStorage.setItem('bev.key', 'bev_test'); });
afterEach(() => { cleanup(); vi.unstubAllGlobals(); sessionStorage.clear(); });

describe('Fleet', () => {
  it('lists incidents with their self-healing actions', async () => {
    const { fetch, calls } = fakeFetch({
      'GET /api/v1/services': SERVICES,
      'GET /api/v1/alerts': { incidents: [INCIDENT], actions: [], healing_dry_run: false },
    });
    vi.stubGlobal('fetch', fetch);
    render(Fleet);
    const row = await screen.findByTestId('incident');
    expect(row.dataset.root).toBe('avatar');
    expect(row.dataset.status).toBe('resolved');
    expect(row.textContent).toContain('restart avatar: done');
    expect(screen.getByTestId('incidents').dataset.open).toBe('0');
    expect(calls.some((c) => c.url.startsWith('/api/v1/alerts?') && c.url.includes('limit=20'))).toBe(true);
  });

  it('still shows the instances when incidents are unavailable', async () => {
    const { fetch } = fakeFetch({
      'GET /api/v1/services': SERVICES,
      'GET /api/v1/alerts': { status: 503, body: { error: 'monitoring has no Prometheus', code: 'FAILED_PRECONDITION' } },
    });
    vi.stubGlobal('fetch', fetch);
    render(Fleet);
    await screen.findByTestId('instance');
    await waitFor(() => expect(screen.getByTestId('incidents').textContent).toContain('Incidents unavailable'));
  });
});
