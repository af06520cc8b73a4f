// Citation links: #/evidence/ID?start=S&end=E opens the evidence with [S, E) highlighted. Offsets
// are code points into the evidence's `content` (as GET /api/v1/evidence/ID returns it), the way a
// Python service would count them. A citation with several cited places (a relationship's two ends)
// adds them all as spans=S-E,S-E; start/end stay the first, so a link with one span is plain.

import { locate } from './locate.js';
import { cpLength } from './offsets.js';

/** The hash route of evidence `id` with code-point spans [{start, end}] highlighted. */
export function citationHref(id, spans = []) {
  const base = `#/evidence/${encodeURIComponent(id)}`;
  const valid = spans.filter((s) => s && Number.isInteger(s.start) && Number.isInteger(s.end) && s.end > s.start);
  if (!valid.length) return base;
  let href = `${base}?start=${valid[0].start}&end=${valid[0].end}`;
  if (valid.length > 1) href += `&spans=${valid.map((s) => `${s.start}-${s.end}`).join(',')}`;
  return href;
}

function offset(value) {
  return typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : null;
}

/** The spans a route query ({start, end, spans} as strings) asks to highlight. */
export function parseSpans(query = {}) {
  const spans = [];
  const start = offset(query.start);
  const end = offset(query.end);
  if (start !== null && end !== null && end > start) spans.push({ start, end });
  for (const part of (query.spans ?? '').split(',')) {
    const match = part.trim().match(/^(\d+)-(\d+)$/);
    if (match && Number(match[2]) > Number(match[1])) spans.push({ start: Number(match[1]), end: Number(match[2]) });
  }
  const seen = new Set();
  return spans.filter((s) => {
    const key = `${s.start}-${s.end}`;
    return seen.has(key) ? false : (seen.add(key), true);
  });
}

/**
 * What a citation claims the evidence says, to locate in it: [{text, mode}] ('value' for entity
 * values and relationship ends, 'quote' for hypothesis quotes). Empty when it claims nothing
 * particular (a supporting id without a quote).
 */
export function claimsOf(kind, item, evidenceId) {
  switch (kind) {
    case 'entity':
      return [{ text: item.value, mode: 'value' }];
    case 'relationship':
      return [{ text: item.source, mode: 'value' }, { text: item.target, mode: 'value' }];
    case 'hypothesis':
      return (item.quotes ?? []).filter((q) => q.evidence === evidenceId).map((q) => ({ text: q.text, mode: 'quote' }));
    case 'quote':
      return [{ text: item.text, mode: 'quote' }];
    default:
      return [];
  }
}

/**
 * Spans of `claims` in `content`. `complete`: whether `content` is the whole evidence (a report's
 * excerpt is only its first 400 code points). Returns {spans, missing}: `missing` is true when a
 * claim was not found in a partial text, so the whole evidence is worth fetching.
 */
export function spansIn(content, claims, complete) {
  const spans = [];
  let missing = false;
  for (const claim of claims) {
    const span = typeof claim.text === 'string' ? locate(content, claim.text, claim.mode) : null;
    if (span) spans.push(span);
    else if (!complete) missing = true;
  }
  return { spans, missing };
}

export const EXCERPT_LIMIT = 400; // services/swarm/workflow.py: "excerpt": e.content[:400]

/** Whether a report excerpt may be cut short of the evidence's content. */
export function mayBeTruncated(excerpt) {
  return cpLength(excerpt ?? '') >= EXCERPT_LIMIT;
}

/** Every place a report cites evidence: [{kind, item, id}] (kind as claimsOf takes it). */
export function citationPlaces(report) {
  const places = [];
  const add = (kind, item, ids) => { for (const id of ids ?? []) places.push({ kind, item, id }); };
  const claim = (kind, item) => {
    if (kind === 'hypothesis') {
      add('hypothesis', item, item.supporting);
      add('none', item, item.contradicting);
      for (const quote of item.quotes ?? []) add('quote', quote, [quote.evidence]);
    } else {
      add(kind, item, item.evidence);
    }
  };
  for (const entity of report.entities ?? []) claim('entity', entity);
  for (const relationship of report.relationships ?? []) claim('relationship', relationship);
  for (const hypothesis of report.hypotheses ?? []) claim('hypothesis', hypothesis);
  for (const entry of report.unsupported ?? []) claim(entry.claim, entry.item ?? {});
  return places;
}

/**
 * The evidence ids whose whole content is needed to locate what the report claims of them: a
 * claim not found in the report's excerpt of the item, when the excerpt may be cut short (or
 * the report has none).
 */
export function evidenceToFetch(report) {
  const excerpts = new Map((report.evidence ?? []).map((e) => [e.id, e.excerpt]));
  const ids = new Set();
  for (const place of citationPlaces(report)) {
    if (ids.has(place.id)) continue;
    const claims = claimsOf(place.kind, place.item, place.id);
    if (!claims.length) continue;
    const excerpt = excerpts.get(place.id);
    if (excerpt === undefined || spansIn(excerpt, claims, !mayBeTruncated(excerpt)).missing) ids.add(place.id);
  }
  return [...ids];
}
