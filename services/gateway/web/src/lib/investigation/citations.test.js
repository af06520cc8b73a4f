import { describe, expect, it } from 'vitest';
import {
  citationHref, citationPlaces, claimsOf, evidenceToFetch, mayBeTruncated, parseSpans, spansIn,
} from './citations.js';
import { parse } from '../router.svelte.js';

describe('citationHref', () => {
  it('links to the evidence without offsets when nothing is located', () => {
    expect(citationHref('ev-1')).toBe('#/evidence/ev-1');
    expect(citationHref('ev-1', [{ start: 3, end: 3 }])).toBe('#/evidence/ev-1');
  });

  it('carries one span as start and end', () => {
    expect(citationHref('ev:a/b', [{ start: 3, end: 9 }])).toBe('#/evidence/ev%3Aa%2Fb?start=3&end=9');
  });

  it('carries several spans, the first as start and end', () => {
    expect(citationHref('e1', [{ start: 1, end: 4 }, { start: 10, end: 12 }]))
      .toBe('#/evidence/e1?start=1&end=4&spans=1-4,10-12');
  });

  it('round-trips through the router and parseSpans', () => {
    const route = parse(citationHref('ev:a', [{ start: 1, end: 4 }, { start: 10, end: 12 }]));
    expect(route.page).toBe('evidence');
    expect(route.params.id).toBe('ev:a');
    expect(parseSpans(route.query)).toEqual([{ start: 1, end: 4 }, { start: 10, end: 12 }]);
  });
});

describe('parseSpans', () => {
  it('reads single start and end', () => {
    expect(parseSpans({ start: '5', end: '8' })).toEqual([{ start: 5, end: 8 }]);
  });

  it('ignores what is not an offset', () => {
    expect(parseSpans({ start: '-1', end: '8' })).toEqual([]);
    expect(parseSpans({ start: '9', end: '8' })).toEqual([]);
    expect(parseSpans({ spans: '1-2,x-3,7-5, 4-6' })).toEqual([{ start: 1, end: 2 }, { start: 4, end: 6 }]);
    expect(parseSpans()).toEqual([]);
  });
});

describe('claims', () => {
  const hypothesis = { quotes: [{ evidence: 'e1', text: 'fake update' }, { evidence: 'e2', text: 'other' }] };

  it('are the quotes for a hypothesis citation of that evidence', () => {
    expect(claimsOf('hypothesis', hypothesis, 'e1')).toEqual([{ text: 'fake update', mode: 'quote' }]);
    expect(claimsOf('hypothesis', hypothesis, 'e3')).toEqual([]);
  });

  it('are both ends of a relationship', () => {
    expect(claimsOf('relationship', { source: 'a.example', target: '203.0.113.9' }, 'e1'))
      .toEqual([{ text: 'a.example', mode: 'value' }, { text: '203.0.113.9', mode: 'value' }]);
  });

  it('locate in content and tell when a cut excerpt may hide one', () => {
    const claims = [{ text: 'a.example', mode: 'value' }, { text: '203.0.113.9', mode: 'value' }];
    expect(spansIn('a.example A 203.0.113.9', claims, true))
      .toEqual({ spans: [{ start: 0, end: 9 }, { start: 12, end: 23 }], missing: false });
    expect(spansIn('a.example A', claims, false)).toEqual({ spans: [{ start: 0, end: 9 }], missing: true });
    expect(spansIn('a.example A', claims, true)).toEqual({ spans: [{ start: 0, end: 9 }], missing: false });
  });

  it('count the excerpt limit in code points', () => {
    expect(mayBeTruncated('x'.repeat(399))).toBe(false);
    expect(mayBeTruncated('😀'.repeat(400))).toBe(true);
    expect(mayBeTruncated('😀'.repeat(300))).toBe(false);
  });
});

describe('a report', () => {
  const long = `${'x'.repeat(400)}`;
  const report = {
    entities: [{ value: 'a.example', evidence: ['e1', 'e2'] }],
    relationships: [{ source: 'a.example', target: 'b.example', evidence: ['e1'] }],
    hypotheses: [{ supporting: ['e3'], contradicting: ['e4'], quotes: [{ evidence: 'e3', text: 'said so' }] }],
    unsupported: [{ claim: 'entity', item: { value: 'z.example', evidence: ['e5'] }, reason: 'not found' }],
    evidence: [
      { id: 'e1', excerpt: 'a.example links b.example' },
      { id: 'e2', excerpt: long },
      { id: 'e3', excerpt: 'it said so' },
      { id: 'e4', excerpt: long },
      { id: 'e5', excerpt: 'short, no value' },
    ],
  };

  it('lists every place that cites evidence', () => {
    expect(citationPlaces(report).map((p) => `${p.kind}:${p.id}`)).toEqual([
      'entity:e1', 'entity:e2', 'relationship:e1', 'hypothesis:e3', 'none:e4', 'quote:e3', 'entity:e5']);
  });

  it('fetches only evidence whose cut excerpt hides a claim', () => {
    // e2: value not in a 400-character excerpt; e4: cited for nothing in particular; e5: complete
    expect(evidenceToFetch(report)).toEqual(['e2']);
    expect(evidenceToFetch({ ...report, evidence: [] })).toEqual(['e1', 'e2', 'e3', 'e5']);
  });
});
