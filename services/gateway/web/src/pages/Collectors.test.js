// The collectors page against a fake gateway (jsdom): a geo run's places on the world map, and a
// file sent to static analysis as its raw bytes, with its findings or the gateway's refusal shown.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import axe from 'axe-core';
import { fakeFetch } from '../lib/investigation/testing/fakeFetch.js';
import Collectors from './Collectors.svelte';

const COLLECTORS = {
  next_cursor: '',
  collectors: [
    { name: 'dns', description: 'DNS records', consumes: ['domain-name'], produces: ['ipv4-addr'], rate_limit_per_s: 5,
      needs_network: true, needs_tor: false, api_key_secret: '' },
    { name: 'geo', description: 'Places from addresses and text, offline', consumes: ['ipv4-addr', 'ipv6-addr', 'url',
      'note', 'location'], produces: ['location'], rate_limit_per_s: 0, needs_network: false, needs_tor: false,
    api_key_secret: '' },
  ],
};

const NOTE_ID = 'note--00000000-0000-5000-8000-000000000001';
const PARIS_ID = 'location--00000000-0000-5000-8000-000000000002';
const TOKYO_ID = 'location--00000000-0000-5000-8000-000000000003';
const NOTE = 'Met at 48.8584, 2.2945 near Paris, then flew to Tokyo';

function observation(id, entity, relations = []) {
  return { id, entity: { tlp: 'clear', properties_json: '{}', ...entity }, relations, source: 'geo:text',
    collector: 'geo', tlp: 'clear', confidence: 70, observed_at: 1796170000 };
}

const GEO = {
  observations: [
    observation('obs-paris', { id: PARIS_ID, type: 'location', value: '48.8584,2.2945', properties_json: JSON.stringify({
      latitude: 48.8584, longitude: 2.2945, name: 'Paris', country: 'FR', country_numeric: '250' }) },
    [{ id: 'relationship--1', source_id: NOTE_ID, target_id: PARIS_ID, type: 'located-at', confidence: 70 }]),
    observation('obs-tokyo', { id: TOKYO_ID, type: 'location', value: '35.6895,139.6917', properties_json: JSON.stringify({
      latitude: 35.6895, longitude: 139.6917, name: 'Tokyo', country: 'JP', country_numeric: '392' }) }),
  ],
};

const SHA256 = '5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef';
const FILE_ID = 'file--00000000-0000-5000-8000-00000000000f';
const MALWARE_ID = 'malware--00000000-0000-5000-8000-00000000000a';
const ANALYSIS = {
  sha256: SHA256, size: 20,
  observations: [
    observation('obs-file', { id: FILE_ID, type: 'file', value: SHA256, properties_json: JSON.stringify({
      name: 'dropper.txt', size: 20, mime_type: 'text/plain',
      hashes: { 'SHA-256': SHA256, MD5: 'd41d8cd98f00b204e9800998ecf8427e' },
      x_static: { type: 'ASCII text', entropy: 3.9, strings: 1, indicators: 0,
        yara: [{ rule: 'HarborLoader_Marker', namespace: 'yara/harborloader.yar', meta: { malware: 'HarborLoader' },
          scope: 'file' }] } }) },
    [{ id: 'relationship--2', source_id: FILE_ID, target_id: MALWARE_ID, type: 'sample-of', confidence: 80 }]),
    observation('obs-malware', { id: MALWARE_ID, type: 'malware', value: 'HarborLoader' }),
  ],
};

async function seriousViolations(container) {
  const result = await axe.run(container, { rules: { 'color-contrast': { enabled: false } } });
  return result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
}

async function chooseFile(content, name) {
  const input = screen.getByLabelText('File');
  const file = new File([content], name, { type: 'text/plain' });
  Object.defineProperty(input, 'files', { value: [file], configurable: true });
  await fireEvent.change(input);
  return file;
}

beforeEach(() => { sessionStorage.setItem('bev.key', 'bev_test'); });
afterEach(() => { cleanup(); vi.unstubAllGlobals(); sessionStorage.clear(); });

describe('Collectors: a geo run', () => {
  it('draws the places it observed on the world map under the observations', async () => {
    const gateway = fakeFetch({ 'GET /api/v1/collectors': COLLECTORS, 'POST /api/v1/collectors/geo/collect': GEO });
    vi.stubGlobal('fetch', gateway.fetch);
    const { container } = render(Collectors);
    await screen.findByRole('option', { name: 'geo' });
    await fireEvent.change(screen.getByLabelText('Collector'), { target: { value: 'geo' } });
    await fireEvent.change(screen.getByLabelText('Target type'), { target: { value: 'note' } });
    await fireEvent.input(screen.getByLabelText('Target'), { target: { value: NOTE } });
    await fireEvent.click(screen.getByTestId('run-collector'));

    const map = await screen.findByTestId('world-map');
    await waitFor(() => expect(map.dataset.atlas).toBe('loaded'));
    const sent = gateway.calls.find((c) => c.method === 'POST');
    expect(JSON.parse(sent.init.body)).toMatchObject({ target_type: 'note', target: NOTE, tlp: 'clear' });
    expect(screen.getAllByTestId('observation')).toHaveLength(2);
    expect(map.dataset.pointCount).toBe('2');
    expect(map.dataset.shaded).toBe('France|Japan');
    const places = within(screen.getByTestId('observed-places'));
    expect(places.getAllByTestId('map-place').map((r) => r.cells[0].textContent.trim())).toEqual(['Paris', 'Tokyo']);
    // The relation names its ends by the observed values where it can.
    expect(screen.getAllByTestId('observation')[0].textContent).toContain('located-at');
    expect(await seriousViolations(container)).toEqual([]);
  });

  it('shows no map for a run without places', async () => {
    const gateway = fakeFetch({ 'GET /api/v1/collectors': COLLECTORS,
      'POST /api/v1/collectors/dns/collect': { observations: [observation('obs-ip', { id: 'ipv4-addr--1', type: 'ipv4-addr',
        value: '203.0.113.9' })] } });
    vi.stubGlobal('fetch', gateway.fetch);
    render(Collectors);
    await screen.findByRole('option', { name: 'dns' });
    await fireEvent.input(screen.getByLabelText('Target'), { target: { value: 'example.com' } });
    await fireEvent.click(screen.getByTestId('run-collector'));
    await screen.findByTestId('observation');
    expect(screen.queryByTestId('world-map')).toBeNull();
  });
});

describe('Collectors: analysing a file', () => {
  it('sends the raw bytes with its name, TLP and investigation, and shows what the analysis found', async () => {
    const gateway = fakeFetch({ 'GET /api/v1/collectors': COLLECTORS, 'POST /api/v1/files': ANALYSIS });
    vi.stubGlobal('fetch', gateway.fetch);
    const { container } = render(Collectors);
    expect(screen.getByTestId('quarantine-note').textContent).toMatch(/never executed.*quarantine/s);
    expect(screen.getByTestId('analyze-submit').disabled).toBe(true); // no file yet

    await chooseFile('harmless test marker', 'dropper notes.txt');
    await fireEvent.change(screen.getByLabelText('TLP', { selector: '#analyze-tlp' }), { target: { value: 'amber' } });
    await fireEvent.input(screen.getByLabelText(/Investigation id/), { target: { value: ' inv-7 ' } });
    await fireEvent.click(screen.getByTestId('analyze-submit'));

    const summary = await screen.findByTestId('file-analysis');
    const sent = gateway.calls.find((c) => c.method === 'POST');
    const url = new URL(sent.url, 'http://gateway');
    expect(url.pathname).toBe('/api/v1/files');
    expect(Object.fromEntries(url.searchParams)).toEqual({ filename: 'dropper notes.txt', tlp: 'amber', investigation_id: 'inv-7' });
    expect(sent.init.headers['Content-Type']).toBe('application/octet-stream');
    expect(sent.init.headers.Authorization).toBe('Bearer bev_test');
    expect(await sent.init.body.text()).toBe('harmless test marker');

    expect(screen.getByTestId('file-sha256').textContent).toBe(SHA256);
    expect(summary.textContent).toContain('d41d8cd98f00b204e9800998ecf8427e');
    expect(summary.textContent).toContain('20 bytes');
    expect(screen.getByTestId('file-type').textContent.trim()).toBe('ASCII text · text/plain');
    expect(summary.textContent).toContain('3.90 bits per byte');
    expect(screen.getByTestId('file-yara').textContent.trim()).toBe('HarborLoader_Marker');
    expect(screen.getByTestId('file-malware').textContent.trim()).toBe('sample of HarborLoader');
    // Rendered as a collector run is, the file and its malware standing out.
    const listed = screen.getAllByTestId('observation');
    expect(listed.map((o) => o.dataset.type)).toEqual(['file', 'malware']);
    expect(listed.every((o) => o.classList.contains('highlight'))).toBe(true);
    expect(listed[0].textContent).toContain('sample-of');
    expect(screen.getByRole('link', { name: 'inv-7' }).getAttribute('href')).toBe('#/investigations/inv-7');
    expect(await seriousViolations(container)).toEqual([]);
  });

  it("shows the gateway's message when it refuses the file", async () => {
    let answer = { status: 413, body: { error: 'body over 104857600 bytes', code: 'RESOURCE_EXHAUSTED' } };
    const gateway = fakeFetch({ 'GET /api/v1/collectors': COLLECTORS, 'POST /api/v1/files': () => answer });
    vi.stubGlobal('fetch', gateway.fetch);
    render(Collectors);
    await chooseFile('x', 'big.bin');
    await fireEvent.click(screen.getByTestId('analyze-submit'));
    await waitFor(() => expect(screen.getByTestId('analyze-error').textContent).toBe('body over 104857600 bytes'));
    expect(screen.getByRole('alert').textContent).toBe('body over 104857600 bytes');
    expect(screen.queryByTestId('file-analysis')).toBeNull();

    answer = { status: 503, body: { error: 'collectors is unavailable', code: 'UNAVAILABLE' } };
    await fireEvent.click(screen.getByTestId('analyze-submit'));
    await waitFor(() => expect(screen.getByTestId('analyze-error').textContent).toBe('collectors is unavailable'));
  });

  it('says when the upload broke off with no answer', async () => {
    const gateway = fakeFetch({ 'GET /api/v1/collectors': COLLECTORS });
    vi.stubGlobal('fetch', async (url, init) => {
      if (String(url).startsWith('/api/v1/files')) throw new TypeError('Failed to fetch');
      return gateway.fetch(url, init);
    });
    render(Collectors);
    await chooseFile('x', 'a.bin');
    await fireEvent.click(screen.getByTestId('analyze-submit'));
    await waitFor(() => expect(screen.getByTestId('analyze-error').textContent)
      .toBe('The upload broke off before the gateway answered (Failed to fetch).'));
  });
});
