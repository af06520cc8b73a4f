// The investigation graph as plain data: entities and relations gathered from the event stream, the
// report and neighbourhood lookups, merged into one set of nodes and edges for cytoscape and the
// accessible table. Pure, so it is tested without a browser.
//
// A node is keyed by its id in the knowledge graph, which the server sends (entity events' `id`,
// relation events' `source_id`/`target_id`, the report's entity ids). Ids are never computed here:
// the fleet derives them (libs/bev/stix.py), and one derivation is the rule. Events recorded before
// the server sent ids are matched by type and value instead, and their nodes have no graph id.

const UNKNOWN = 'unknown';
const MAX_LABEL = 36;
const STIX_ID = /^([a-z][a-z0-9]*(?:-[a-z0-9]+)*)--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A node's label: its value, shortened in the middle so both ends of a long URL stay readable. */
export function shortLabel(value, max = MAX_LABEL) {
  const chars = Array.from(value ?? '');
  if (chars.length <= max) return chars.join('');
  const head = Math.ceil((max - 1) * 0.6);
  return `${chars.slice(0, head).join('')}…${chars.slice(chars.length - (max - 1 - head)).join('')}`;
}

/** The type a STIX id names (`domain-name--…` → domain-name); null for anything else. */
export function stixType(text) {
  return STIX_ID.exec(text ?? '')?.[1] ?? null;
}

export class GraphModel {
  nodes = new Map(); // key -> {key, id, type, value, evidence: Set, observations: Set, properties, fromGraph}
  edges = new Map(); // key -> {key, source, target, type, evidence: Set, observations: Set, confidence, fromGraph}
  #byId = new Map(); // graph id -> node key
  #byTypeValue = new Map(); // `${type}|${value}` -> node key
  #byValue = new Map(); // value -> [node key]

  /**
   * The node for an entity, created or merged. With an `id` the node is the graph entity of that id
   * (keyed by it when new); without one it is matched by type and value, or adopts a placeholder a
   * relation left for its value. Entities of one type and value but different ids stay apart.
   */
  addEntity({ type, value, id = '', evidence = [], observations = [], properties = null, fromGraph = false }) {
    if (!value) return null;
    type = type || UNKNOWN;
    id = id || '';
    // A node found by value is this entity unless it has another graph id.
    const fits = (key) => key && (!id || !this.nodes.get(key).id || this.nodes.get(key).id === id);
    const sameValue = this.#byTypeValue.get(`${type}|${value}`);
    let key = (id && this.#byId.get(id)) || (fits(sameValue) ? sameValue : null);
    // A relation named this value before its entity came: adopt that placeholder.
    if (!key && type !== UNKNOWN) {
      key = (this.#byValue.get(value) ?? []).find((k) => this.nodes.get(k).type === UNKNOWN && fits(k));
    }
    let node = key && this.nodes.get(key);
    if (!node) {
      // Prefixes keep a value's key apart from any id and from the edges' keys.
      key = id || `value:${type}|${value}`;
      node = { key, id: '', type, value, evidence: new Set(), observations: new Set(), properties: null, fromGraph };
      this.nodes.set(key, node);
      this.#byValue.set(value, [...(this.#byValue.get(value) ?? []), key]);
    }
    if (node.type === UNKNOWN && type !== UNKNOWN) node.type = type;
    // A relation end known only by its id is shown by the id until the entity names it.
    if (node.value === node.id && value !== node.value) this.#rename(node, value);
    if (id && !node.id) node.id = id;
    if (node.id) this.#byId.set(node.id, node.key);
    this.#byTypeValue.set(`${node.type}|${node.value}`, node.key);
    for (const e of evidence) if (e) node.evidence.add(e);
    for (const o of observations) if (o) node.observations.add(o);
    if (properties && Object.keys(properties).length) node.properties = { ...node.properties, ...properties };
    node.fromGraph = node.fromGraph && fromGraph;
    return node;
  }

  #rename(node, value) {
    const keys = (this.#byValue.get(node.value) ?? []).filter((k) => k !== node.key);
    if (keys.length) this.#byValue.set(node.value, keys); else this.#byValue.delete(node.value);
    if (this.#byTypeValue.get(`${node.type}|${node.value}`) === node.key) this.#byTypeValue.delete(`${node.type}|${node.value}`);
    node.value = value;
    this.#byValue.set(value, [...(this.#byValue.get(value) ?? []), node.key]);
    this.#byTypeValue.set(`${node.type}|${value}`, node.key);
  }

  /**
   * The node key of a relation's end: by its graph id when one is given, else by its value. Before
   * the server sent ids, an end it could not name came as its id in place of the value.
   */
  #end(id, value, fromGraph) {
    if (!id && stixType(value)) id = value;
    if (id) {
      const known = this.nodes.get(this.#byId.get(id));
      if (known) {
        if (value && known.value === known.id && value !== known.id) this.#rename(known, value);
        return known.key;
      }
      return this.addEntity({ type: stixType(id) ?? UNKNOWN, value: value || id, id, fromGraph }).key;
    }
    const keys = this.#byValue.get(value);
    if (keys?.length) return keys.find((k) => this.nodes.get(k).type !== UNKNOWN) ?? keys[0];
    return this.addEntity({ type: UNKNOWN, value, fromGraph }).key;
  }

  /** An edge between two entities, each given by graph id (`sourceId`, `targetId`) or value (`source`, `target`). */
  addRelation({ source = '', target = '', sourceId = '', targetId = '', type, evidence = [], observations = [],
    confidence = null, fromGraph = false }) {
    if (!(source || sourceId) || !(target || targetId) || !type) return null;
    const from = this.#end(sourceId, source, fromGraph);
    const to = this.#end(targetId, target, fromGraph);
    const key = `edge:${from} ${type} ${to}`;
    let edge = this.edges.get(key);
    if (!edge) {
      edge = { key, source: from, target: to, type, evidence: new Set(), observations: new Set(), confidence, fromGraph };
      this.edges.set(key, edge);
    }
    for (const e of evidence) if (e) edge.evidence.add(e);
    for (const o of observations) if (o) edge.observations.add(o);
    if (confidence !== null && (edge.confidence === null || confidence > edge.confidence)) edge.confidence = confidence;
    edge.fromGraph = edge.fromGraph && fromGraph;
    return edge;
  }

  /** An investigation event ({kind, data}); true when it changed the graph. */
  addEvent(event) {
    const data = event?.data ?? {};
    if (event?.kind === 'entity') {
      return this.addEntity({ type: data.type, value: data.value, id: data.id, evidence: [data.evidence] }) !== null;
    }
    if (event?.kind === 'relation') {
      return this.addRelation({ source: data.source, target: data.target, sourceId: data.source_id,
        targetId: data.target_id, type: data.type, evidence: [data.evidence] }) !== null;
    }
    return false;
  }

  /** The finished report: its entities (with their graph ids), and relationships whose ends it names by value. */
  addReport(report) {
    const idOf = new Map();
    for (const e of report?.entities ?? []) {
      const node = this.addEntity({ type: e.type, value: e.value, id: e.id, evidence: e.evidence ?? [] });
      if (node && e.id && !idOf.has(e.value)) idOf.set(e.value, e.id);
    }
    for (const r of report?.relationships ?? []) {
      this.addRelation({ source: r.source, target: r.target, sourceId: idOf.get(r.source), targetId: idOf.get(r.target),
        type: r.type, evidence: r.evidence ?? [], confidence: r.confidence ?? null });
    }
  }

  /** A neighbourhood from the knowledge graph (GET /api/v1/graph/neighborhood); returns what it added. */
  addSubgraph(subgraph) {
    const before = { nodes: this.nodes.size, edges: this.edges.size };
    for (const e of subgraph?.entities ?? []) {
      let properties = null;
      try { properties = e.properties_json ? JSON.parse(e.properties_json) : null; } catch { /* shown without */ }
      this.addEntity({ type: e.type, value: e.value, id: e.id, properties, fromGraph: true });
    }
    for (const r of subgraph?.relations ?? []) {
      this.addRelation({ sourceId: r.source_id, targetId: r.target_id, type: r.type, observations: r.evidence_ids ?? [],
        confidence: r.confidence ?? null, fromGraph: true });
    }
    return { nodes: this.nodes.size - before.nodes, edges: this.edges.size - before.edges };
  }

  /** Cytoscape element definitions for every node and edge. */
  elements() {
    const nodes = [...this.nodes.values()].map((n) => ({
      group: 'nodes',
      data: { id: n.key, label: shortLabel(n.value), type: n.type, value: n.value, fromGraph: n.fromGraph ? 1 : 0 },
    }));
    const edges = [...this.edges.values()].map((e) => ({
      group: 'edges',
      data: { id: e.key, source: e.source, target: e.target, label: e.type, type: e.type, fromGraph: e.fromGraph ? 1 : 0 },
    }));
    return [...nodes, ...edges];
  }

  /** The node or edge with this key (a cytoscape element id). */
  get(key) {
    return this.nodes.get(key) ?? this.edges.get(key) ?? null;
  }
}
