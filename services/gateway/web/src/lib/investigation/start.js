// The new-investigation form -> POST /api/v1/investigations's body (services/gateway/routes/swarm.py
// StartBody). Budget fields left empty are left out, so that the service's defaults apply.

export const TARGET_TYPES = ['domain', 'url', 'ipv4', 'email', 'btc', 'eth', 'md5', 'sha1', 'sha256',
  'threat-actor', 'malware'];

// The route's bounds (MAX_DEPTH, MAX_BUDGET_TOKENS, MAX_TOOL_CALLS, MAX_WALL_S, MAX_ALLOW, MAX_SEEDS).
export const LIMITS = { depth: 5, tokens: 10_000_000, toolCalls: 10_000, wallS: 86_400, allow: 100, seeds: 20 };

export const MODE_HELP = {
  hierarchical: 'The leader plans and assigns work; workers and specialists execute; the leader picks the finding.',
  democratic: 'At least three agents propose hypotheses independently and every agent ranks them (Borda count).',
  hybrid: 'Hierarchical, switching to a democratic vote when hypotheses conflict or confidence is low.',
  autonomous: 'Agents claim open questions from a shared blackboard and answer them until nothing is left.',
};

/** Non-empty trimmed lines of a textarea. */
export function lines(text) {
  return String(text ?? '').split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
}

function number(value) {
  if (value === '' || value === null || value === undefined) return undefined;
  const n = Number(value);
  return Number.isFinite(n) ? n : undefined;
}

/** The request body from the form's fields (strings as inputs give them). */
export function startBody(form) {
  const budget = {};
  const fields = [['max_depth', form.maxDepth], ['max_tokens', form.maxTokens],
    ['max_tool_calls', form.maxToolCalls], ['max_wall_s', form.maxWallS]];
  for (const [key, value] of fields) {
    const n = number(value);
    if (n !== undefined) budget[key] = n;
  }
  const body = {
    target: String(form.target ?? '').trim(),
    mode: form.mode || 'hybrid',
    tlp: form.tlp || 'clear',
    scope: { allow: lines(form.allow), opsec: Boolean(form.opsec) },
    seeds: lines(form.seeds),
    budget,
  };
  if (form.targetType) body.target_type = form.targetType;
  return body;
}
