import { describe, it, expect } from 'vitest';
import { GraphModel, shortLabel, stixType } from './model.js';

// Ids as the server sends them (computed by libs/bev/stix.py; the model never computes one).
const DOMAIN = 'browser-update.example.com';
const DOMAIN_ID = 'domain-name--51310ede-79de-5d75-908b-2ff639f52b97';
const IP = '203.0.113.9';
const IP_ID = 'ipv4-addr--39090fdc-366e-571f-ab5b-d05e2918f88f';
const NS = 'ns1.darkharbor-dns.example.net';
const NS_ID = 'domain-name--05e432f2-9022-5ec1-a356-6908a32b912a';

const entity = (data) => ({ kind: 'entity', data });
const relation = (data) => ({ kind: 'relation', data });
const byValue = (g, value) => [...g.nodes.values()].filter((n) => n.value === value);

describe('GraphModel with ids from the server', () => {
  it('keys nodes by the entity events’ ids and edges by the relation events’ source_id and target_id', () => {
    const g = new GraphModel();
    g.addEvent(entity({ id: DOMAIN_ID, type: 'domain-name', value: DOMAIN, evidence: 'ev-1' }));
    g.addEvent(entity({ id: IP_ID, type: 'ipv4-addr', value: IP, evidence: 'ev-1' }));
    g.addEvent(relation({ source: DOMAIN, source_id: DOMAIN_ID, type: 'resolves-to', target: IP, target_id: IP_ID,
      evidence: 'ev-1' }));
    g.addEvent(entity({ id: DOMAIN_ID, type: 'domain-name', value: DOMAIN, evidence: 'ev-2' }));
    expect([...g.nodes.keys()]).toEqual([DOMAIN_ID, IP_ID]);
    const domain = g.nodes.get(DOMAIN_ID);
    expect(domain.id).toBe(DOMAIN_ID);
    expect([...domain.evidence]).toEqual(['ev-1', 'ev-2']);
    expect(g.edges.size).toBe(1);
    const [edge] = g.edges.values();
    expect([edge.source, edge.target, edge.type]).toEqual([DOMAIN_ID, IP_ID, 'resolves-to']);
    const els = g.elements();
    expect(els.filter((e) => e.group === 'nodes').map((e) => e.data.id)).toEqual([DOMAIN_ID, IP_ID]);
    expect(els.find((e) => e.group === 'edges').data).toMatchObject({ source: DOMAIN_ID, target: IP_ID, label: 'resolves-to' });
    expect(g.get(edge.key)).toBe(edge);
    expect(g.get(DOMAIN_ID)).toBe(domain);
  });

  it('draws a relation that comes before its entities, typed by its ids, and names an end shown by its id', () => {
    const g = new GraphModel();
    // The swarm could not name the target yet: the value is the id.
    g.addEvent(relation({ source: DOMAIN, source_id: DOMAIN_ID, type: 'resolves-to', target: IP_ID, target_id: IP_ID,
      evidence: 'ev-1' }));
    expect(g.nodes.get(DOMAIN_ID)).toMatchObject({ type: 'domain-name', value: DOMAIN, id: DOMAIN_ID });
    expect(g.nodes.get(IP_ID)).toMatchObject({ type: 'ipv4-addr', value: IP_ID, id: IP_ID });
    g.addEvent(entity({ id: IP_ID, type: 'ipv4-addr', value: IP, evidence: 'ev-2' }));
    g.addEvent(entity({ id: DOMAIN_ID, type: 'domain-name', value: DOMAIN, evidence: 'ev-1' }));
    expect(g.nodes.size).toBe(2);
    expect(g.nodes.get(IP_ID).value).toBe(IP);
    expect(byValue(g, IP_ID)).toEqual([]);
    // A later relation naming the end by value finds the renamed node.
    g.addEvent(relation({ source: NS, type: 'related-to', target: IP, evidence: 'ev-3' }));
    expect([...g.edges.values()].map((e) => e.target)).toEqual([IP_ID, IP_ID]);
  });

  it('keeps entities of one type and value but different ids apart', () => {
    const g = new GraphModel();
    const wallet = '0x52908400098527886e0f7030069857d2e4169ee7';
    const btc = 'x-crypto-address--00000000-0000-5000-8000-000000000001';
    const eth = 'x-crypto-address--00000000-0000-5000-8000-000000000002';
    g.addEvent(entity({ id: btc, type: 'x-crypto-address', value: wallet, evidence: 'ev-1' }));
    g.addEvent(entity({ id: eth, type: 'x-crypto-address', value: wallet, evidence: 'ev-2' }));
    expect([...g.nodes.keys()]).toEqual([btc, eth]);
  });

  it('falls back to type and value for an entity the collector gave no id, and takes the id the report has', () => {
    const g = new GraphModel();
    g.addEvent(entity({ id: '', type: 'domain-name', value: NS, evidence: 'ev-1' }));
    const node = byValue(g, NS)[0];
    expect(node.id).toBe('');
    g.addReport({
      entities: [{ id: NS_ID, type: 'domain-name', value: NS, confidence: 90, evidence: ['ev-1', 'ev-4'] }],
      relationships: [],
    });
    expect(g.nodes.size).toBe(1);
    expect(node.id).toBe(NS_ID);
    expect([...node.evidence]).toEqual(['ev-1', 'ev-4']);
  });

  it("merges the report's entities by id and resolves its relationships' values to those ids", () => {
    const g = new GraphModel();
    g.addEvent(entity({ id: DOMAIN_ID, type: 'domain-name', value: DOMAIN, evidence: 'ev-1' }));
    g.addReport({
      entities: [
        { id: DOMAIN_ID, type: 'domain-name', value: DOMAIN, confidence: 90, evidence: ['ev-3'] },
        { id: NS_ID, type: 'domain-name', value: NS, confidence: 90, evidence: ['ev-3'] },
      ],
      relationships: [
        { source: DOMAIN, target: NS, type: 'name-server', confidence: 90, evidence: ['ev-3'] },
        { source: DOMAIN, target: 'not-an-entity.example', type: 'related-to', confidence: 50, evidence: ['ev-3'] },
      ],
    });
    expect([...g.nodes.get(DOMAIN_ID).evidence]).toEqual(['ev-1', 'ev-3']);
    const edges = [...g.edges.values()];
    expect(edges.map((e) => [e.source, e.type, e.target])).toEqual([
      [DOMAIN_ID, 'name-server', NS_ID],
      [DOMAIN_ID, 'related-to', edges[1].target],
    ]);
    expect(g.nodes.get(edges[1].target)).toMatchObject({ type: 'unknown', value: 'not-an-entity.example', id: '' });
    expect(edges[0].confidence).toBe(90);
  });

  it('merges a neighbourhood by id and marks what only the knowledge graph knows', () => {
    const g = new GraphModel();
    const other = 'domain-name--11111111-1111-5111-8111-111111111111';
    g.addEvent(entity({ id: DOMAIN_ID, type: 'domain-name', value: DOMAIN, evidence: 'ev-1' }));
    g.addEvent(relation({ source: DOMAIN, source_id: DOMAIN_ID, type: 'resolves-to', target: IP_ID, target_id: IP_ID,
      evidence: 'ev-1' }));
    const added = g.addSubgraph({
      entities: [
        { id: DOMAIN_ID, type: 'domain-name', value: DOMAIN, properties_json: '{}' },
        { id: IP_ID, type: 'ipv4-addr', value: IP, properties_json: '{"asn": 64500}' },
        { id: other, type: 'domain-name', value: 'other.example', properties_json: 'not json' },
      ],
      relations: [
        { id: 'relationship--1', source_id: DOMAIN_ID, target_id: IP_ID, type: 'resolves-to', confidence: 90,
          evidence_ids: ['obs-1'] },
        { id: 'relationship--2', source_id: other, target_id: IP_ID, type: 'resolves-to', confidence: 70,
          evidence_ids: ['obs-2'] },
      ],
      truncated: false,
    });
    expect(added).toEqual({ nodes: 1, edges: 1 });
    const ip = g.nodes.get(IP_ID);
    expect(ip.value).toBe(IP);
    expect(ip.properties).toEqual({ asn: 64500 });
    expect(ip.fromGraph).toBe(false);
    expect(g.nodes.get(other)).toMatchObject({ fromGraph: true, properties: null });
    const edge = [...g.edges.values()].find((e) => e.source === other);
    expect([...edge.observations]).toEqual(['obs-2']);
    expect(edge.fromGraph).toBe(true);
    const known = [...g.edges.values()].find((e) => e.source === DOMAIN_ID);
    expect(known).toMatchObject({ confidence: 90, fromGraph: false });
    expect([...known.observations]).toEqual(['obs-1']);
  });
});

describe('GraphModel with events recorded before ids were sent', () => {
  it('matches by type and value and relations by value, computing no id', () => {
    const g = new GraphModel();
    g.addEvent(entity({ type: 'domain-name', value: DOMAIN, evidence: 'ev-1' }));
    g.addEvent(entity({ type: 'ipv4-addr', value: IP, evidence: 'ev-1' }));
    g.addEvent(relation({ source: DOMAIN, type: 'resolves-to', target: IP, evidence: 'ev-1' }));
    g.addEvent(entity({ type: 'domain-name', value: DOMAIN, evidence: 'ev-2' }));
    expect(g.nodes.size).toBe(2);
    expect(g.edges.size).toBe(1);
    for (const node of g.nodes.values()) {
      expect(node.id).toBe('');
      expect(stixType(node.key)).toBeNull();
    }
    const [edge] = g.edges.values();
    expect(g.nodes.get(edge.source).value).toBe(DOMAIN);
    expect(g.nodes.get(edge.target).value).toBe(IP);
    expect([...byValue(g, DOMAIN)[0].evidence]).toEqual(['ev-1', 'ev-2']);
  });

  it('gives a placeholder its type when the entity arrives after a relation names it', () => {
    const g = new GraphModel();
    g.addRelation({ source: DOMAIN, type: 'resolves-to', target: IP, evidence: ['ev-1'] });
    expect([...g.nodes.values()].map((n) => n.type)).toEqual(['unknown', 'unknown']);
    g.addEvent(entity({ type: 'ipv4-addr', value: IP, evidence: 'ev-1' }));
    expect(g.nodes.size).toBe(2);
    expect(byValue(g, IP)[0].type).toBe('ipv4-addr');
  });

  it('takes an end the swarm named by its id as that id, so the report names it', () => {
    const g = new GraphModel();
    g.addEvent(entity({ type: 'domain-name', value: DOMAIN, evidence: 'ev-1' }));
    g.addEvent(relation({ source: DOMAIN, type: 'resolves-to', target: IP_ID, evidence: 'ev-1' }));
    expect(g.nodes.get(IP_ID)).toMatchObject({ type: 'ipv4-addr', value: IP_ID });
    g.addReport({
      entities: [
        { id: DOMAIN_ID, type: 'domain-name', value: DOMAIN, confidence: 90, evidence: ['ev-1'] },
        { id: IP_ID, type: 'ipv4-addr', value: IP, confidence: 90, evidence: ['ev-1'] },
      ],
      relationships: [{ source: DOMAIN, target: IP, type: 'resolves-to', confidence: 90, evidence: ['ev-1'] }],
    });
    expect(g.nodes.size).toBe(2);
    expect(g.nodes.get(IP_ID).value).toBe(IP);
    expect(byValue(g, DOMAIN)[0].id).toBe(DOMAIN_ID);
    expect(g.edges.size).toBe(1);
  });

  it('ignores other events and incomplete ones', () => {
    const g = new GraphModel();
    expect(g.addEvent({ kind: 'phase', data: { phase: 'ingestion' } })).toBe(false);
    expect(g.addEvent(entity({ type: 'domain-name', value: '' }))).toBe(false);
    expect(g.addEvent(relation({ source: DOMAIN, type: 'resolves-to' }))).toBe(false);
    expect(g.nodes.size).toBe(0);
  });
});

describe('stixType', () => {
  it('reads the type of a STIX id and nothing else', () => {
    expect(stixType(DOMAIN_ID)).toBe('domain-name');
    expect(stixType('x-crypto-address--00000000-0000-5000-8000-000000000001')).toBe('x-crypto-address');
    expect(stixType(DOMAIN)).toBeNull();
    expect(stixType('')).toBeNull();
    expect(stixType(undefined)).toBeNull();
  });
});

describe('shortLabel', () => {
  it('keeps short values and shortens long ones in the middle', () => {
    expect(shortLabel('example.com')).toBe('example.com');
    const long = `https://browser-update.example.com/${'a'.repeat(60)}/update.html`;
    const label = shortLabel(long, 20);
    expect(Array.from(label)).toHaveLength(20);
    expect(label.startsWith('https://')).toBe(true);
    expect(label.endsWith('.html')).toBe(true);
  });
});
