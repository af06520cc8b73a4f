// The world's countries, bundled with the build (Natural Earth at 1:110m, from world-atlas): the map
// draws offline and asks no other server for its outlines. They are a chunk of their own, loaded
// from the gateway the first time a map is shown, so pages without one do not carry them. Each
// feature's `id` is the country's ISO 3166-1 numeric code as a three-digit string ("250" France);
// a few disputed areas have none.
import { feature } from 'topojson-client';

let loading = null;

/** The countries as GeoJSON features (a promise), converted from the TopoJSON once. */
export function loadCountries() {
  loading ??= import('world-atlas/countries-110m.json').then(({ default: topology }) => (
    Object.freeze(feature(topology, topology.objects.countries).features)));
  return loading;
}
