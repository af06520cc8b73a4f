// Places on a world map as plain data: location entities (a point, "lat,lon"; or a country, its
// ISO 3166-1 alpha-2 code) made into places, projected, and matched to the atlas's countries so the
// countries that hold one are shaded. Pure, so it is tested without a browser.
//
// A location's properties (the graph entity's properties_json) say most: latitude, longitude, name,
// country (alpha-2) and country_numeric (ISO numeric, the atlas's feature id). Without them a point
// is read from its value, and the country that holds it is found by its outline.
import { geoContains, geoGraticule10, geoNaturalEarth1, geoPath } from 'd3-geo';

export const WIDTH = 960;
export const HEIGHT = 500;
const PAD = 4;
const POINT = /^\s*([+-]?\d{1,3}(?:\.\d+)?)\s*,\s*([+-]?\d{1,3}(?:\.\d+)?)\s*$/;
const ALPHA2 = /^[A-Za-z]{2}$/;
const NAMED_IN_SUMMARY = 8;

function finite(value) {
  if (value === null || value === undefined || value === '') return null;
  const number = Number(value);
  return Number.isFinite(number) ? number : null;
}

function text(value) {
  return typeof value === 'string' ? value.trim() : '';
}

function onEarth(latitude, longitude) {
  return latitude !== null && longitude !== null && Math.abs(latitude) <= 90 && Math.abs(longitude) <= 180;
}

/** A point's value ("48.8584,2.2945") as {latitude, longitude}; null for anything else. */
export function parsePoint(value) {
  const match = POINT.exec(String(value ?? ''));
  if (!match) return null;
  const latitude = Number(match[1]);
  const longitude = Number(match[2]);
  return onEarth(latitude, longitude) ? { latitude, longitude } : null;
}

/** An ISO 3166-1 numeric code as the atlas writes it ("36" -> "036"); '' when there is none. */
export function numericCode(value) {
  const digits = String(value ?? '').trim();
  return /^\d{1,3}$/.test(digits) ? digits.padStart(3, '0') : '';
}

/** An entity's properties: its `properties` object, else its `properties_json` parsed; {} when neither. */
export function propertiesOf(entity) {
  if (entity?.properties && typeof entity.properties === 'object') return entity.properties;
  try {
    const parsed = JSON.parse(entity?.properties_json || '{}');
    return parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed : {};
  } catch {
    return {};
  }
}

/** "48.8584, 2.2945" (4 decimals, as the graph keeps them). */
export function formatCoordinates(latitude, longitude) {
  return `${latitude.toFixed(4)}, ${longitude.toFixed(4)}`;
}

/**
 * A location entity ({id, type, value, properties | properties_json}) as a place:
 * {key, id, value, kind: 'point' | 'country', latitude, longitude, name, country, countryNumeric, label};
 * null for an entity that names neither a point nor a country.
 */
export function toPlace(entity) {
  if (!entity || (entity.type && entity.type !== 'location')) return null;
  const value = String(entity.value ?? '').trim();
  const properties = propertiesOf(entity);
  let latitude = finite(properties.latitude);
  let longitude = finite(properties.longitude);
  if (!onEarth(latitude, longitude)) {
    const point = parsePoint(value);
    latitude = point?.latitude ?? null;
    longitude = point?.longitude ?? null;
  }
  const country = (text(properties.country) || (ALPHA2.test(value) ? value : '')).toUpperCase();
  const countryNumeric = numericCode(properties.country_numeric);
  const kind = latitude !== null ? 'point' : country || countryNumeric ? 'country' : null;
  if (!kind) return null;
  const name = text(properties.name) || text(properties.city) || (kind === 'country' ? country || value : '');
  const label = name || formatCoordinates(latitude, longitude);
  return { key: entity.id || `location:${value}`, id: entity.id ?? '', value, kind, latitude, longitude, name,
    country, countryNumeric, label };
}

/** Location entities as places, once each (a later copy of one, with its properties, replaces it). */
export function toPlaces(entities) {
  const places = new Map();
  for (const entity of entities ?? []) {
    const place = toPlace(entity);
    if (place) places.set(place.key, place);
  }
  return [...places.values()];
}

/** The map's projection: Natural Earth, the whole sphere fitted into width x height. */
export function projection(width = WIDTH, height = HEIGHT) {
  return geoNaturalEarth1().fitExtent([[PAD, PAD], [width - PAD, height - PAD]], { type: 'Sphere' });
}

/** [x, y] of a point on the map, to 0.1 of a unit; null where the projection cannot place it. */
export function project(proj, latitude, longitude) {
  const xy = proj([longitude, latitude]);
  if (!xy || !xy.every(Number.isFinite)) return null;
  return [Math.round(xy[0] * 10) / 10, Math.round(xy[1] * 10) / 10];
}

// The outlines are the same for every map of one size: drawn once.
const outlines = new WeakMap(); // features -> Map(`${width}x${height}` -> {sphere, graticule, paths})

function outlinesOf(features, width, height) {
  let bySize = outlines.get(features);
  if (!bySize) outlines.set(features, bySize = new Map());
  const size = `${width}x${height}`;
  if (!bySize.has(size)) {
    const path = geoPath(projection(width, height)).digits(1);
    bySize.set(size, { sphere: path({ type: 'Sphere' }), graticule: path(geoGraticule10()),
      paths: features.map((f) => path(f) ?? '') });
  }
  return bySize.get(size);
}

/** The atlas feature of the country a place is in, or null. */
export function countryOf(place, features, index = indexOf(features)) {
  if (place.countryNumeric && index.byNumeric.has(place.countryNumeric)) return index.byNumeric.get(place.countryNumeric);
  if (place.kind === 'point') {
    return features.find((f) => geoContains(f, [place.longitude, place.latitude])) ?? null;
  }
  return (place.name && index.byName.get(place.name.toLowerCase())) ?? null;
}

function indexOf(features) {
  const byNumeric = new Map();
  const byName = new Map();
  for (const f of features) {
    if (f.id !== undefined) byNumeric.set(String(f.id), f);
    if (f.properties?.name) byName.set(f.properties.name.toLowerCase(), f);
  }
  return { byNumeric, byName };
}

/**
 * What the map shows for these places over these countries: the outlines (countries shaded where
 * a place is), the points projected, and the places with their country's name for the list.
 */
export function mapView(places, features, { width = WIDTH, height = HEIGHT } = {}) {
  const { sphere, graticule, paths } = outlinesOf(features, width, height);
  const proj = projection(width, height);
  const index = indexOf(features);
  const holding = new Map(); // feature -> places in it
  const listed = places.map((place) => {
    const feature = countryOf(place, features, index);
    if (feature) holding.set(feature, (holding.get(feature) ?? 0) + 1);
    return { ...place, countryName: feature?.properties?.name ?? '' };
  });
  const countries = features.map((f, i) => ({
    index: i, id: f.id === undefined ? '' : String(f.id), name: f.properties?.name ?? '', d: paths[i],
    places: holding.get(f) ?? 0, shaded: holding.has(f),
  }));
  const points = [];
  for (const place of listed) {
    if (place.kind !== 'point') continue;
    const xy = project(proj, place.latitude, place.longitude);
    if (xy) points.push({ ...place, x: xy[0], y: xy[1] });
  }
  return { width, height, sphere, graticule, countries, points, places: listed,
    shaded: countries.filter((c) => c.shaded).map((c) => c.name).sort((a, b) => a.localeCompare(b)) };
}

function named(names) {
  if (names.length <= NAMED_IN_SUMMARY) return names.join(', ');
  return `${names.slice(0, NAMED_IN_SUMMARY).join(', ')} and ${names.length - NAMED_IN_SUMMARY} more`;
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

/** One sentence for screen readers: what the map shows (the list beside it has the details). */
export function summary(view) {
  if (!view.places.length) return 'World map: no places to show.';
  const points = view.places.filter((p) => p.kind === 'point');
  const countries = view.places.filter((p) => p.kind === 'country');
  const parts = [];
  if (points.length) parts.push(`${plural(points.length, 'point', 'points')} (${named(points.map((p) => p.label))})`);
  if (countries.length) {
    parts.push(`${plural(countries.length, 'country', 'countries')} (${named(countries.map((p) => p.countryName || p.label))})`);
  }
  const shaded = view.shaded.length ? `; shaded: ${named(view.shaded)}` : '';
  return `World map of ${plural(view.places.length, 'place', 'places')}: ${parts.join(' and ')}${shaded}.`;
}
