// Investigation events ({id, investigation_id, kind, at, data}, services/swarm/events.schema.json):
// a one-line summary per kind for the timeline, and a reducer that keeps what the live page shows
// beside it (phase, agents at work, budget use, the end).

import { PHASES, formatNumber, percent } from './format.js';

export const KINDS = [
  'phase', 'plan', 'tool_call', 'tool_result', 'evidence', 'entity', 'relation', 'hypothesis', 'vote',
  'consensus', 'mode_switch', 'budget', 'warning', 'error', 'done',
];

const KIND_LABELS = {
  phase: 'Phase', plan: 'Plan', tool_call: 'Tool call', tool_result: 'Tool result', evidence: 'Evidence',
  entity: 'Entity', relation: 'Relation', hypothesis: 'Hypothesis', vote: 'Vote', consensus: 'Consensus',
  mode_switch: 'Mode switch', budget: 'Budget', warning: 'Warning', error: 'Error', done: 'Done',
  stream_error: 'Stream error',
};

export function kindLabel(kind) {
  return KIND_LABELS[kind] ?? String(kind);
}

/** How an event of this kind is marked in the timeline: 'ok', 'warn', 'bad' or ''. */
export function kindTone(event) {
  const { kind, data = {} } = event;
  if (kind === 'error' || kind === 'stream_error') return 'bad';
  if (kind === 'warning') return 'warn';
  if (kind === 'tool_result' && data.status === 'error') return 'bad';
  if (kind === 'done') return data.status === 'completed' ? 'ok' : data.status === 'failed' ? 'bad' : 'warn';
  return '';
}

function clip(text, limit = 80) {
  const flat = String(text ?? '').replace(/\s+/g, ' ').trim();
  return flat.length <= limit ? flat : `${flat.slice(0, limit - 1)}…`;
}

/** Tool arguments on one line: collector=dns target=example.com. */
export function formatArgs(args) {
  if (!args || typeof args !== 'object') return '';
  return Object.entries(args)
    .filter(([, v]) => v !== '' && v !== null && v !== undefined && v !== false)
    .map(([k, v]) => `${k}=${clip(typeof v === 'object' ? JSON.stringify(v) : v, 60)}`)
    .join(' ');
}

function confidence(value) {
  return typeof value === 'number' ? ` (confidence ${value.toFixed(2)})` : '';
}

/** One human line for an event. */
export function summarize(event) {
  const d = event.data ?? {};
  switch (event.kind) {
    case 'phase':
      return `Phase ${d.phase}${typeof d.progress === 'number' ? ` (${percent(d.progress)}%)` : ''}`;
    case 'plan': {
      const tasks = d.tasks ?? [];
      const what = tasks.slice(0, 3).map((t) => `${t.collector} ${t.target}`).join(', ');
      return `${d.agent} planned ${tasks.length} task${tasks.length === 1 ? '' : 's'}`
        + `${d.playbook ? ` (${d.playbook} playbook)` : ''}${what ? `: ${what}${tasks.length > 3 ? ', …' : ''}` : ''}`;
    }
    case 'tool_call':
      return `${d.agent}${d.role && d.role !== d.agent ? ` (${d.role})` : ''} → ${d.tool} ${formatArgs(d.args)}`.trim();
    case 'tool_result':
      return d.status === 'error'
        ? `${d.agent} ← ${d.tool} failed: ${clip(d.error, 120)}`
        : `${d.agent} ← ${d.tool} ok${typeof d.items === 'number' ? `, ${d.items} item${d.items === 1 ? '' : 's'}` : ''}`
          + `${typeof d.ms === 'number' ? ` in ${d.ms} ms` : ''}`;
    case 'evidence':
      return `${d.kind ?? 'evidence'} from ${d.collector}: ${clip(d.uri, 100)}`;
    case 'entity':
      return `${d.type} ${clip(d.value, 100)}`;
    case 'relation':
      return `${clip(d.source, 60)} —${d.type}→ ${clip(d.target, 60)}`;
    case 'hypothesis':
      return `${d.agent} proposed ${d.id}: “${clip(d.statement, 140)}”${confidence(d.confidence)}`;
    case 'vote':
      return `${d.agent} ranked ${(d.ranking ?? []).join(' > ') || 'nothing'}`;
    case 'consensus': {
      const dissent = (d.dissent ?? []).length;
      return `${d.rule}: ${d.winner ? `${d.winner} wins` : 'no winner'}`
        + `${dissent ? `, ${dissent} dissent${dissent === 1 ? '' : 's'}` : ', no dissent'}`;
    }
    case 'mode_switch':
      return `${d.from} → ${d.to}: ${clip(d.reason, 140)}`;
    case 'budget':
      return `${formatNumber(d.tokens)} of ${formatNumber(d.max_tokens)} tokens`
        + `${d.max_tokens ? ` (${percent(d.tokens / d.max_tokens)}%)` : ''}`;
    case 'warning':
      return `${d.warning}${d.agent ? ` from ${d.agent}` : ''}: ${clip(d.message, 140)}`;
    case 'error':
      return clip(d.message, 200);
    case 'done':
      return `${String(d.status ?? '').replaceAll('_', ' ')}${d.reason ? `: ${clip(d.reason, 140)}` : ''}`
        + `${typeof d.citation_integrity === 'number' ? ` (citation integrity ${percent(d.citation_integrity)}%)` : ''}`;
    case 'stream_error':
      return clip(d.error ?? d.message ?? JSON.stringify(d), 200);
    default:
      return clip(JSON.stringify(d), 160);
  }
}

/** The evidence id an event links to, if any. */
export function evidenceOf(event) {
  const value = event.data?.evidence;
  return typeof value === 'string' && value ? value : null;
}

/** What an agent is doing, after an event it sent. */
function activity(event) {
  const d = event.data ?? {};
  switch (event.kind) {
    case 'tool_call': return `calling ${d.tool} ${formatArgs(d.args)}`.trim();
    case 'tool_result': return d.status === 'error' ? `${d.tool} failed` : `got ${d.tool} results`;
    case 'plan': return `planned ${(d.tasks ?? []).length} tasks`;
    case 'hypothesis': return `proposed ${d.id}`;
    case 'vote': return `voted ${(d.ranking ?? []).join(' > ')}`;
    case 'mode_switch': return `switched to ${d.to}`;
    case 'warning': return `warning: ${d.warning}`;
    default: return kindLabel(event.kind).toLowerCase();
  }
}

export function initialLive() {
  return {
    lastId: 0, phase: null, progress: 0, phasesSeen: [], done: null, streamError: null,
    tokens: null, maxTokens: null, toolCalls: 0, agents: {}, counts: {},
  };
}

/**
 * The live state after `event`; `state` is left as it was. An event at or below the last id seen
 * (a reconnect's overlap) changes nothing and returns `state` itself.
 */
export function applyEvent(state, event) {
  const id = Number(event.id);
  if (event.kind !== 'stream_error' && Number.isFinite(id) && id <= state.lastId) return state;
  const d = event.data ?? {};
  const next = { ...state, counts: { ...state.counts, [event.kind]: (state.counts[event.kind] ?? 0) + 1 } };
  if (Number.isFinite(id) && event.kind !== 'stream_error') next.lastId = id;
  switch (event.kind) {
    case 'phase':
      next.phase = d.phase;
      if (typeof d.progress === 'number') next.progress = d.progress;
      if (PHASES.includes(d.phase) && !state.phasesSeen.includes(d.phase)) next.phasesSeen = [...state.phasesSeen, d.phase];
      break;
    case 'budget':
      next.tokens = d.tokens;
      next.maxTokens = d.max_tokens;
      break;
    case 'tool_call':
      next.toolCalls = state.toolCalls + 1;
      break;
    case 'done':
      next.done = d;
      if (d.status === 'completed') next.progress = 1;
      break;
    case 'stream_error':
      next.streamError = d.error ?? d.message ?? 'the event stream broke';
      break;
    default:
      break;
  }
  if (typeof d.agent === 'string' && d.agent) {
    const before = state.agents[d.agent];
    next.agents = {
      ...state.agents,
      [d.agent]: {
        name: d.agent,
        role: d.role ?? before?.role ?? '',
        activity: activity(event),
        at: event.at ?? before?.at ?? null,
        events: (before?.events ?? 0) + 1,
      },
    };
  }
  return next;
}

/** Each phase as {phase, state: 'done' | 'current' | 'todo'}; `complete`: the investigation completed. */
export function phaseSteps(current, complete = false) {
  const index = PHASES.indexOf(current);
  return PHASES.map((phase, i) => ({
    phase,
    state: complete || i < index ? 'done' : i === index ? 'current' : 'todo',
  }));
}
