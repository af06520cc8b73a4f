import { describe, expect, it } from 'vitest';
import { applyEvent, evidenceOf, formatArgs, initialLive, kindTone, phaseSteps, summarize } from './events.js';

let nextId = 1;
function ev(kind, data, id = nextId++) {
  return { id, investigation_id: 'inv-1', kind, at: '2026-12-01T10:00:03Z', data };
}

describe('summarize', () => {
  const cases = [
    [ev('phase', { phase: 'correlation', progress: 0.55 }), 'Phase correlation (55%)'],
    [ev('tool_call', { agent: 'worker-1', role: 'worker', tool: 'collectors.Collect',
      args: { collector: 'dns', target: 'a.example', opsec: false }, key: 'k' }),
    'worker-1 (worker) → collectors.Collect collector=dns target=a.example'],
    [ev('tool_result', { agent: 'worker-1', tool: 'collectors.Collect', key: 'k', status: 'ok', ms: 120, items: 3 }),
      'worker-1 ← collectors.Collect ok, 3 items in 120 ms'],
    [ev('tool_result', { agent: 'worker-1', tool: 'collectors.Collect', key: 'k', status: 'error', ms: 5, error: 'timeout' }),
      'worker-1 ← collectors.Collect failed: timeout'],
    [ev('evidence', { evidence: 'ev-1', kind: 'observation', uri: 'dns://a.example/A', collector: 'dns' }),
      'observation from dns: dns://a.example/A'],
    [ev('entity', { type: 'domain-name', value: 'a.example', evidence: 'ev-1' }), 'domain-name a.example'],
    [ev('relation', { source: 'a.example', type: 'resolves-to', target: '203.0.113.9', evidence: 'ev-1' }),
      'a.example —resolves-to→ 203.0.113.9'],
    [ev('hypothesis', { agent: 'analyst', id: 'H1', statement: 'A fake update page.', confidence: 0.8, supporting: [] }),
      'analyst proposed H1: “A fake update page.” (confidence 0.80)'],
    [ev('vote', { agent: 'critic', ranking: ['H2', 'H1'] }), 'critic ranked H2 > H1'],
    [ev('consensus', { rule: 'borda', winner: 'H2', scores: {}, rankings: {},
      dissent: [{ agent: 'a', preferred: 'H1', reason: '' }] }), 'borda: H2 wins, 1 dissent'],
    [ev('mode_switch', { agent: 'leader', from: 'hierarchical', to: 'democratic', reason: 'hypotheses conflict' }),
      'hierarchical → democratic: hypotheses conflict'],
    [ev('budget', { tokens: 8210, max_tokens: 200000 }), '8,210 of 200,000 tokens (4%)'],
    [ev('warning', { agent: 'monitor', warning: 'prompt_injection', message: 'ignore previous instructions' }),
      'prompt_injection from monitor: ignore previous instructions'],
    [ev('error', { message: 'swarm lost its database' }), 'swarm lost its database'],
    [ev('done', { status: 'budget_exhausted', reason: 'tokens', citation_integrity: 1 }),
      'budget exhausted: tokens (citation integrity 100%)'],
    [ev('plan', { agent: 'leader', playbook: 'domain', tasks: [{ collector: 'dns', target: 'a', reason: '' }] }),
      'leader planned 1 task (domain playbook): dns a'],
  ];
  it.each(cases)('summarises %#', (event, line) => {
    expect(summarize(event)).toBe(line);
  });

  it('shows an unknown kind as its data', () => {
    expect(summarize(ev('novel', { x: 1 }))).toBe('{"x":1}');
  });

  it('clips long values to one line', () => {
    const line = summarize(ev('error', { message: 'x\n'.repeat(300) }));
    expect(line.length).toBe(200);
    expect(line).not.toContain('\n');
  });
});

describe('helpers', () => {
  it('format arguments, leaving out empty ones', () => {
    expect(formatArgs({ a: 'x', b: '', c: null, d: { k: 1 }, e: 2 })).toBe('a=x d={"k":1} e=2');
    expect(formatArgs(undefined)).toBe('');
  });

  it('tell the evidence an event names', () => {
    expect(evidenceOf(ev('entity', { evidence: 'ev-9' }))).toBe('ev-9');
    expect(evidenceOf(ev('warning', { evidence: null }))).toBeNull();
  });

  it('mark warnings, errors and the end', () => {
    expect(kindTone(ev('warning', {}))).toBe('warn');
    expect(kindTone(ev('tool_result', { status: 'error' }))).toBe('bad');
    expect(kindTone(ev('done', { status: 'completed' }))).toBe('ok');
    expect(kindTone(ev('vote', {}))).toBe('');
  });

  it('mark phases done and current', () => {
    expect(phaseSteps('correlation').map((s) => s.state)).toEqual(['done', 'done', 'current', 'todo', 'todo']);
    expect(phaseSteps(null).map((s) => s.state)).toEqual(['todo', 'todo', 'todo', 'todo', 'todo']);
    expect(phaseSteps('synthesis', true).every((s) => s.state === 'done')).toBe(true);
  });
});

describe('applyEvent', () => {
  it('follows phase, budget, tool calls, agents and the end', () => {
    let state = initialLive();
    const before = state;
    state = applyEvent(state, ev('phase', { phase: 'ingestion', progress: 0.1 }, 1));
    state = applyEvent(state, ev('tool_call', { agent: 'worker-1', role: 'worker', tool: 'collectors.Collect',
      args: { collector: 'dns' }, key: 'k' }, 2));
    state = applyEvent(state, ev('budget', { tokens: 100, max_tokens: 1000 }, 3));
    state = applyEvent(state, ev('vote', { agent: 'worker-1', ranking: ['H1'] }, 4));
    state = applyEvent(state, ev('done', { status: 'completed' }, 5));
    expect(before).toEqual(initialLive());
    expect(state).toMatchObject({
      lastId: 5, phase: 'ingestion', progress: 1, phasesSeen: ['ingestion'], tokens: 100, maxTokens: 1000,
      toolCalls: 1, done: { status: 'completed' }, counts: { phase: 1, tool_call: 1, budget: 1, vote: 1, done: 1 },
    });
    expect(state.agents['worker-1']).toEqual({
      name: 'worker-1', role: 'worker', activity: 'voted H1', at: '2026-12-01T10:00:03Z', events: 2 });
  });

  it('ignores an event seen before (a reconnect overlap)', () => {
    const state = applyEvent(initialLive(), ev('tool_call', { agent: 'a', tool: 't', args: {} }, 7));
    expect(applyEvent(state, ev('tool_call', { agent: 'a', tool: 't', args: {} }, 7))).toBe(state);
    expect(applyEvent(state, ev('tool_call', { agent: 'a', tool: 't', args: {} }, 3))).toBe(state);
  });

  it('keeps a stream error', () => {
    const state = applyEvent(initialLive(), { id: '', kind: 'stream_error', data: { error: 'gone', code: 'UNAVAILABLE' } });
    expect(state.streamError).toBe('gone');
    expect(state.lastId).toBe(0);
  });
});
