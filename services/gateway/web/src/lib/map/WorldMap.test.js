// The world map component (jsdom): every country drawn, the points with their titles, the countries
// holding a place shaded, the empty state, and the table that tells the same to a screen reader.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import axe from 'axe-core';
import WorldMap from './WorldMap.svelte';
import { loadCountries } from './atlas.js';

const PARIS = { id: 'location--00000000-0000-5000-8000-000000000001', type: 'location', value: '48.8584,2.2945',
  properties_json: JSON.stringify({ latitude: 48.8584, longitude: 2.2945, name: 'Paris', country: 'FR',
    country_numeric: '250' }) };
const TOKYO = { id: 'location--00000000-0000-5000-8000-000000000002', type: 'location', value: '35.6895,139.6917' };
const BRAZIL = { id: 'location--00000000-0000-5000-8000-000000000003', type: 'location', value: 'BR',
  properties_json: JSON.stringify({ name: 'Brazil', country: 'BR', country_numeric: '076' }) };

async function seriousViolations(container) {
  const result = await axe.run(container, { rules: { 'color-contrast': { enabled: false } } });
  return result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
}

let countries;
beforeAll(async () => { countries = await loadCountries(); });
afterEach(cleanup);

// The outlines come in a chunk of their own: the map is whole once they are drawn.
async function drawn() {
  await waitFor(() => expect(screen.getByTestId('world-map').dataset.atlas).toBe('loaded'));
}

describe('WorldMap', () => {
  it('draws every country, the points, and shades the countries that hold a place', async () => {
    const { container } = render(WorldMap, { props: { locations: [PARIS, TOKYO, BRAZIL] } });
    await drawn();
    expect(container.querySelectorAll('path.country')).toHaveLength(countries.length);
    expect([...container.querySelectorAll('path.country')].every((p) => p.getAttribute('d')?.startsWith('M'))).toBe(true);

    const points = screen.getAllByTestId('map-point');
    expect(points).toHaveLength(2); // Brazil is a country: shaded, not a dot
    expect(points.map((p) => p.querySelector('title').textContent))
      .toEqual(['Paris (48.8584, 2.2945)', '35.6895, 139.6917']);
    for (const p of points) {
      expect(Number(p.getAttribute('cx'))).toBeGreaterThan(0);
      expect(Number(p.getAttribute('cy'))).toBeGreaterThan(0);
    }

    const shaded = screen.getAllByTestId('map-country-shaded').map((p) => p.dataset.country).sort();
    expect(shaded).toEqual(['076', '250', '392']);
    expect(container.querySelector('path[data-country="250"] title').textContent).toBe('France: 1 place');
    expect(container.querySelector('path[data-country="826"]').classList.contains('shaded')).toBe(false);
    expect(screen.getByTestId('world-map').dataset.shaded).toBe('Brazil|France|Japan');
    expect(screen.queryByTestId('map-empty')).toBeNull();
    expect(await seriousViolations(container)).toEqual([]);
  });

  it('is one labelled image, with a table of the places for screen readers and keyboards', async () => {
    render(WorldMap, { props: { locations: [PARIS, TOKYO, BRAZIL], caption: 'Places observed' } });
    await drawn();
    const image = screen.getByRole('img');
    expect(image.getAttribute('aria-label')).toBe('World map of 3 places: 2 points (Paris, 35.6895, 139.6917) '
      + 'and 1 country (Brazil); shaded: Brazil, France, Japan.');

    const table = screen.getByRole('table', { name: 'Places observed (3)' });
    const rows = within(table).getAllByTestId('map-place').map((r) => [...r.cells].map((c) => c.textContent.trim()));
    expect(rows).toEqual([
      ['Paris', 'point', '48.8584, 2.2945', 'France (FR)'],
      ['35.6895, 139.6917', 'point', '35.6895, 139.6917', 'Japan'],
      ['Brazil', 'country', '', 'Brazil (BR)'],
    ]);

    // A place's button marks its point on the map, and unmarks it again.
    const paris = within(table).getByRole('button', { name: 'Paris' });
    await fireEvent.click(paris);
    expect(paris.getAttribute('aria-pressed')).toBe('true');
    const dot = screen.getAllByTestId('map-point').find((p) => p.dataset.key === PARIS.id);
    expect(dot.classList.contains('selected')).toBe(true);
    expect(dot.getAttribute('r')).toBe('7');
    await fireEvent.click(paris);
    expect(paris.getAttribute('aria-pressed')).toBe('false');
    expect(dot.classList.contains('selected')).toBe(false);
  });

  it('says when there are no places yet, and still draws the world', async () => {
    const { container } = render(WorldMap, { props: { locations: [{ type: 'location', value: 'nowhere' }] } });
    await drawn();
    expect(screen.getByTestId('map-empty').textContent).toBe('No places were found yet.');
    expect(screen.getByRole('img').getAttribute('aria-label')).toBe('World map: no places to show.');
    expect(container.querySelectorAll('path.country')).toHaveLength(countries.length);
    expect(screen.queryAllByTestId('map-point')).toHaveLength(0);
    expect(screen.queryByRole('table')).toBeNull();
    expect(await seriousViolations(container)).toEqual([]);
  });
});
