// A hash router: #/investigations/ID -> {page: 'investigation', params: {id: 'ID'}}. Hash routes
// keep the gateway's static serving to one file (index.html at /).

const ROUTES = [
  [/^\/?$/, 'investigations', []],
  [/^\/investigations$/, 'investigations', []],
  [/^\/investigations\/new$/, 'new-investigation', []],
  [/^\/investigations\/([^/]+)$/, 'investigation', ['id']],
  [/^\/investigations\/([^/]+)\/report$/, 'report', ['id']],
  [/^\/investigations\/([^/]+)\/graph$/, 'graph', ['id']],
  [/^\/investigations\/([^/]+)\/map$/, 'map', ['id']],
  [/^\/evidence\/([^/]+)$/, 'evidence', ['id']],
  [/^\/search$/, 'search', []],
  [/^\/collectors$/, 'collectors', []],
  [/^\/fleet$/, 'fleet', []],
];

export function parse(hash) {
  const [path, queryString = ''] = hash.replace(/^#/, '').split('?');
  const query = Object.fromEntries(new URLSearchParams(queryString));
  for (const [pattern, page, names] of ROUTES) {
    const match = path.match(pattern);
    if (match) {
      const params = Object.fromEntries(names.map((name, i) => [name, decodeURIComponent(match[i + 1])]));
      return { page, params, query };
    }
  }
  return { page: 'not-found', params: {}, query };
}

export const route = $state(parse(typeof location === 'undefined' ? '' : location.hash));

if (typeof window !== 'undefined') {
  window.addEventListener('hashchange', () => Object.assign(route, parse(location.hash)));
}

export function go(path) {
  location.hash = path;
}
