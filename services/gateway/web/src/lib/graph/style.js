// How each STIX type looks in the graph: a colour and a shape, shared by cytoscape's stylesheet and
// the legend and table (so the accessible view uses the same key as the picture).

export const TYPE_STYLES = {
  'domain-name': { color: '#1f5fa8', shape: 'ellipse', label: 'Domain' },
  'ipv4-addr': { color: '#2e7d32', shape: 'round-rectangle', label: 'IPv4 address' },
  'ipv6-addr': { color: '#1b5e20', shape: 'round-rectangle', label: 'IPv6 address' },
  url: { color: '#6a3fa0', shape: 'round-tag', label: 'URL' },
  'email-addr': { color: '#b25d00', shape: 'diamond', label: 'E-mail' },
  file: { color: '#5d4037', shape: 'rectangle', label: 'File' },
  'autonomous-system': { color: '#00796b', shape: 'hexagon', label: 'Autonomous system' },
  'x-crypto-address': { color: '#8d6e00', shape: 'octagon', label: 'Wallet' },
  vulnerability: { color: '#c62828', shape: 'triangle', label: 'Vulnerability' },
  malware: { color: '#ad1457', shape: 'star', label: 'Malware' },
  'threat-actor': { color: '#b71c1c', shape: 'vee', label: 'Threat actor' },
  'intrusion-set': { color: '#880e4f', shape: 'vee', label: 'Intrusion set' },
  campaign: { color: '#4a148c', shape: 'pentagon', label: 'Campaign' },
  'attack-pattern': { color: '#d84315', shape: 'rhomboid', label: 'Attack pattern' },
  tool: { color: '#37474f', shape: 'barrel', label: 'Tool' },
  identity: { color: '#0277bd', shape: 'round-pentagon', label: 'Identity' },
  note: { color: '#616161', shape: 'round-rectangle', label: 'Note' },
  location: { color: '#00838f', shape: 'round-diamond', label: 'Location' },
};
const OTHER = { color: '#6b7280', shape: 'ellipse', label: 'Other' };
const UNKNOWN = { color: '#6b7280', shape: 'ellipse', label: 'Type not known yet' };

/** The colour, shape and label of a STIX type (a neutral grey circle for types not listed). */
export function typeStyle(type) {
  if (type === 'unknown') return UNKNOWN;
  return TYPE_STYLES[type] ?? { ...OTHER, label: type || OTHER.label };
}

/** Cytoscape's stylesheet: node colour and shape by type, labels under the nodes. */
export function stylesheet() {
  const byType = Object.entries(TYPE_STYLES).map(([type, s]) => ({
    selector: `node[type = "${type}"]`,
    style: { 'background-color': s.color, shape: s.shape },
  }));
  return [
    {
      selector: 'node',
      style: {
        'background-color': OTHER.color, shape: OTHER.shape, width: 26, height: 26, label: 'data(label)',
        'font-size': 10, color: '#1b1f24', 'text-valign': 'bottom', 'text-margin-y': 4,
        'text-outline-color': '#ffffff', 'text-outline-width': 2, 'border-width': 2, 'border-color': '#ffffff',
        'min-zoomed-font-size': 5,
      },
    },
    ...byType,
    {
      selector: 'node[target = 1]',
      style: { width: 40, height: 40, 'border-color': '#1b1f24', 'border-width': 3, 'font-size': 12, 'font-weight': 700 },
    },
    { selector: 'node[fromGraph = 1]', style: { 'border-color': '#8c959f', 'border-style': 'dashed' } },
    {
      selector: 'edge',
      style: {
        width: 1.6, 'line-color': '#9aa4b0', 'target-arrow-color': '#9aa4b0', 'target-arrow-shape': 'triangle',
        'curve-style': 'bezier', label: 'data(label)', 'font-size': 8, color: '#57606a',
        'text-rotation': 'autorotate', 'text-background-color': '#ffffff', 'text-background-opacity': 0.85,
        'text-background-padding': 1, 'min-zoomed-font-size': 8,
      },
    },
    { selector: 'edge[fromGraph = 1]', style: { 'line-style': 'dashed' } },
    {
      selector: ':selected',
      style: { 'border-color': '#f2b705', 'border-width': 4, 'line-color': '#f2b705', 'target-arrow-color': '#f2b705' },
    },
    { selector: '.faded', style: { opacity: 0.25 } },
  ];
}

/**
 * A layout that stays readable as the graph grows: force-directed (cose) up to a few hundred
 * nodes, levels beyond. `fresh`: nothing is placed yet, so start from random positions.
 */
export function layoutOptions(nodeCount, { animate = false, fresh = false } = {}) {
  if (nodeCount > 300) return { name: 'breadthfirst', directed: true, spacingFactor: 1.1, animate, fit: true, padding: 24 };
  return {
    name: 'cose', animate, animationDuration: 400, randomize: fresh, fit: true, padding: 30,
    nodeDimensionsIncludeLabels: false, idealEdgeLength: () => 85, nodeRepulsion: () => 30000,
    edgeElasticity: () => 100, gravity: 1, numIter: 1000, initialTemp: 200, coolingFactor: 0.95,
    minTemp: 1.0, componentSpacing: 60,
  };
}
