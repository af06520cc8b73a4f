// The map's model over the real bundled atlas: places from location entities, the countries that
// hold them, where the points land, and the sentence a screen reader hears.
import { beforeAll, describe, expect, it } from 'vitest';
import { loadCountries } from './atlas.js';
import {
  HEIGHT, WIDTH, countryOf, mapView, numericCode, parsePoint, project, projection, propertiesOf, summary, toPlace,
  toPlaces,
} from './model.js';

const EIFFEL = {
  id: 'location--3a1b6a6e-0000-5000-8000-000000000001', type: 'location', value: '48.8584,2.2945',
  properties_json: JSON.stringify({ latitude: 48.8584, longitude: 2.2945, name: 'Paris', country: 'FR',
    country_numeric: '250' }),
};
const TOKYO = { id: 'location--3a1b6a6e-0000-5000-8000-000000000002', type: 'location', value: '35.6895,139.6917' };
const AUSTRALIA = { id: 'location--3a1b6a6e-0000-5000-8000-000000000003', type: 'location', value: 'AU',
  properties: { name: 'Australia', country: 'AU', country_numeric: '36' } };

describe('places from location entities', () => {
  it('reads a point from its properties, and from its value when it has none', () => {
    expect(toPlace(EIFFEL)).toMatchObject({ kind: 'point', latitude: 48.8584, longitude: 2.2945, name: 'Paris',
      label: 'Paris', country: 'FR', countryNumeric: '250', key: EIFFEL.id });
    expect(toPlace(TOKYO)).toMatchObject({ kind: 'point', latitude: 35.6895, longitude: 139.6917, name: '',
      label: '35.6895, 139.6917', country: '', countryNumeric: '' });
  });

  it('reads a country from its ISO code, padding the numeric code as the atlas writes it', () => {
    expect(toPlace(AUSTRALIA)).toMatchObject({ kind: 'country', latitude: null, country: 'AU', countryNumeric: '036' });
    expect(toPlace({ type: 'location', value: 'fr' })).toMatchObject({ kind: 'country', country: 'FR', key: 'location:fr' });
  });

  it('refuses what names no place', () => {
    expect(toPlace({ type: 'location', value: 'somewhere' })).toBeNull();
    expect(toPlace({ type: 'location', value: '95.0,10.0' })).toBeNull(); // no latitude above 90
    expect(toPlace({ type: 'domain-name', value: 'example.com' })).toBeNull();
    expect(parsePoint('48.8584, 2.2945')).toEqual({ latitude: 48.8584, longitude: 2.2945 });
    expect(parsePoint('-33.8688,151.2093')).toEqual({ latitude: -33.8688, longitude: 151.2093 });
    expect(parsePoint('10,200')).toBeNull();
    expect(numericCode('250')).toBe('250');
    expect(numericCode('abc')).toBe('');
    expect(propertiesOf({ properties_json: 'not json' })).toEqual({});
  });

  it('keeps one place per entity, the later copy (with its properties) winning', () => {
    const bare = { id: EIFFEL.id, type: 'location', value: EIFFEL.value };
    const places = toPlaces([bare, TOKYO, EIFFEL, { type: 'note', value: 'x' }]);
    expect(places.map((p) => p.label)).toEqual(['Paris', '35.6895, 139.6917']);
  });
});

describe('the map view', () => {
  let atlas;
  beforeAll(async () => { atlas = await loadCountries(); });

  it('has the atlas countries keyed by their ISO numeric code', () => {
    expect(atlas.length).toBeGreaterThan(170);
    expect(atlas.find((f) => f.id === '250').properties.name).toBe('France');
  });

  it('shades the countries that hold a place, by code or by outline', () => {
    const view = mapView(toPlaces([EIFFEL, TOKYO, AUSTRALIA]), atlas);
    expect(view.shaded).toEqual(['Australia', 'France', 'Japan']);
    expect(view.countries.filter((c) => c.shaded).map((c) => c.id).sort()).toEqual(['036', '250', '392']);
    expect(view.countries.find((c) => c.id === '250').places).toBe(1);
    expect(view.countries.every((c) => typeof c.d === 'string')).toBe(true);
    expect(view.places.map((p) => p.countryName)).toEqual(['France', 'Japan', 'Australia']);
    // Tokyo had no properties: its country came from the outline that contains it.
    expect(countryOf(toPlace(TOKYO), atlas).properties.name).toBe('Japan');
  });

  it('projects points inside the map, west to east and north to south', () => {
    const view = mapView(toPlaces([EIFFEL, TOKYO, AUSTRALIA]), atlas);
    expect(view.points.map((p) => p.label)).toEqual(['Paris', '35.6895, 139.6917']); // a country is no dot
    const [paris, tokyo] = view.points;
    for (const p of view.points) {
      expect(p.x).toBeGreaterThan(0);
      expect(p.x).toBeLessThan(WIDTH);
      expect(p.y).toBeGreaterThan(0);
      expect(p.y).toBeLessThan(HEIGHT);
    }
    expect(tokyo.x).toBeGreaterThan(paris.x);
    expect(tokyo.y).toBeGreaterThan(paris.y);
    // The centre of the projection is (0, 0), in the middle of the map.
    const [x, y] = project(projection(), 0, 0);
    expect(Math.abs(x - WIDTH / 2)).toBeLessThan(1);
    expect(Math.abs(y - HEIGHT / 2)).toBeLessThan(1);
  });

  it('sums the map up in one sentence', () => {
    expect(summary(mapView([], atlas))).toBe('World map: no places to show.');
    expect(summary(mapView(toPlaces([EIFFEL, TOKYO, AUSTRALIA]), atlas))).toBe(
      'World map of 3 places: 2 points (Paris, 35.6895, 139.6917) and 1 country (Australia); '
      + 'shaded: Australia, France, Japan.');
    const many = Array.from({ length: 10 }, (_, i) => ({ type: 'location', value: `${i}.0000,${i}.0000` }));
    expect(summary(mapView(toPlaces(many), atlas))).toMatch(/10 points \(.*and 2 more\)/);
  });
});
