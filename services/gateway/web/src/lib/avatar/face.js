// What the avatar's face looks like for a state: pure functions from the AvatarState the server
// streams (state, expression, intensity, gaze, colour) and the viseme being spoken to the numbers
// the SVG face draws. Kept apart from the component so the mapping is tested without a browser.

export const STATES = ['idle', 'scanning', 'focused_analysis', 'alert_discovery', 'celebration_success', 'thinking',
  'uncertain', 'concerned', 'error'];
export const EMOTIONS = ['curiosity', 'focus', 'alarm', 'joy', 'doubt', 'worry', 'distress'];
export const PERSONALITIES = ['analyst', 'mentor', 'red-teamer'];

export const STATE_LABELS = {
  idle: 'Idle', scanning: 'Scanning', focused_analysis: 'Focused analysis', alert_discovery: 'Threat found',
  celebration_success: 'Investigation complete', thinking: 'Thinking', uncertain: 'Uncertain', concerned: 'Concerned',
  error: 'Error',
};

// The expression a state shows when the server names none (or one this UI does not know).
const STATE_EXPRESSION = {
  idle: 'neutral', scanning: 'curiosity', focused_analysis: 'focus', alert_discovery: 'alarm',
  celebration_success: 'joy', thinking: 'focus', uncertain: 'doubt', concerned: 'worry', error: 'distress',
};

// And its colour, when the server sends none that is usable.
const STATE_COLOR = {
  idle: '#5b7db1', scanning: '#2f8fb8', focused_analysis: '#3f63c9', alert_discovery: '#d94f3d',
  celebration_success: '#2e9e5b', thinking: '#7b61c4', uncertain: '#b08a2e', concerned: '#d07a2b', error: '#9b2c2c',
};

/*
 * Face parameters at full intensity. browY: brows up (-) or down (+), in px; browTilt: inner ends
 * up (+) or down (-), in degrees; browAsym: the right brow raised by this many px more; eyeOpen: eye
 * height (1 = neutral); pupil: pupil size; mouthCurve: smile (+) or frown (-); mouthOpen: 0..1;
 * mouthWidth: 1 = neutral; mouthSkew: one corner raised; cheeks: blush 0..1.
 */
const NEUTRAL = { browY: 0, browTilt: 0, browAsym: 0, eyeOpen: 1, pupil: 1, mouthCurve: 0.12, mouthOpen: 0,
  mouthWidth: 1, mouthSkew: 0, cheeks: 0 };

const FACES = {
  neutral: NEUTRAL,
  curiosity: { ...NEUTRAL, browY: -5, browTilt: 5, browAsym: 4, eyeOpen: 1.15, pupil: 1.12, mouthCurve: 0.25,
    mouthOpen: 0.12, mouthWidth: 0.85 },
  focus: { ...NEUTRAL, browY: 4, browTilt: -20, eyeOpen: 0.72, pupil: 0.95, mouthCurve: 0, mouthWidth: 0.8 },
  alarm: { ...NEUTRAL, browY: -9, browTilt: 12, eyeOpen: 1.38, pupil: 0.78, mouthCurve: -0.2, mouthOpen: 0.75,
    mouthWidth: 0.7 },
  joy: { ...NEUTRAL, browY: -4, eyeOpen: 0.82, pupil: 1.05, mouthCurve: 1, mouthOpen: 0.35, mouthWidth: 1.18,
    cheeks: 1 },
  doubt: { ...NEUTRAL, browY: 0, browTilt: -8, browAsym: 7, eyeOpen: 0.86, mouthCurve: -0.2, mouthWidth: 0.85,
    mouthSkew: 0.6 },
  worry: { ...NEUTRAL, browY: -2, browTilt: 26, eyeOpen: 1.06, pupil: 0.92, mouthCurve: -0.5, mouthOpen: 0.06,
    mouthWidth: 0.9 },
  distress: { ...NEUTRAL, browY: -4, browTilt: 30, eyeOpen: 1.22, pupil: 0.8, mouthCurve: -0.85, mouthOpen: 0.45,
    mouthWidth: 1.02 },
};

export const clamp = (value, low, high) => Math.min(high, Math.max(low, Number.isFinite(value) ? value : low));

/** The expression to draw: the server's when this UI knows it, else the state's own. */
export function expressionFor(expression, state) {
  if (expression && expression in FACES) return expression;
  return STATE_EXPRESSION[state] ?? 'neutral';
}

/**
 * The face for an expression at an intensity (0..1). Even a faint emotion shows a little of itself
 * (from 35% of the full face), so that a state change is always visible.
 */
export function faceParams(expression, intensity = 1) {
  const target = FACES[expression] ?? NEUTRAL;
  const t = expression === 'neutral' ? 0 : 0.35 + 0.65 * clamp(intensity, 0, 1);
  const out = {};
  for (const key of Object.keys(NEUTRAL)) out[key] = +(NEUTRAL[key] + (target[key] - NEUTRAL[key]) * t).toFixed(3);
  return out;
}

/** A CSS colour the server sent (#rgb, #rrggbb, #rrggbbaa), else the state's own. */
export function colorFor(color, state) {
  if (typeof color === 'string' && /^#(?:[0-9a-f]{3}|[0-9a-f]{6}|[0-9a-f]{8})$/i.test(color)) return color;
  return STATE_COLOR[state] ?? STATE_COLOR.idle;
}

/** Pupil offset in px for a gaze of x (right +) and y (up +), each -1..1. */
export function gazeOffset(gaze, max = 6) {
  return { dx: +(clamp(gaze?.x ?? 0, -1, 1) * max).toFixed(2), dy: +(-clamp(gaze?.y ?? 0, -1, 1) * max).toFixed(2) };
}

// Mouth shapes of the visemes (the Preston Blair set and its usual names): opening, width, rounding.
const VISEMES = {
  rest: { open: 0, width: 1 },
  AI: { open: 0.85, width: 1.08 },
  E: { open: 0.45, width: 1.18 },
  O: { open: 0.75, width: 0.68 },
  U: { open: 0.35, width: 0.55 },
  MBP: { open: 0, width: 0.9 },
  FV: { open: 0.14, width: 1.02 },
  L: { open: 0.5, width: 0.95 },
  WQ: { open: 0.3, width: 0.58 },
  etc: { open: 0.32, width: 1 },
};
const VISEME_NAMES = Object.fromEntries(Object.keys(VISEMES).map((name) => [name.toLowerCase(), name]));

/** The mouth shape of a viseme name (any case); a name this UI does not know is a generic open mouth. */
export function visemeShape(viseme) {
  const name = VISEME_NAMES[String(viseme ?? 'rest').toLowerCase()] ?? 'etc';
  return VISEMES[name];
}

/**
 * The viseme at `ms` into the narration: visemes are [{viseme, start_ms, end_ms}] in time order;
 * 'rest' between and after them.
 */
export function visemeAt(visemes, ms) {
  if (!Array.isArray(visemes) || visemes.length === 0) return 'rest';
  let low = 0;
  let high = visemes.length - 1;
  let found = -1;
  while (low <= high) {
    const mid = (low + high) >> 1;
    if (visemes[mid].start_ms <= ms) { found = mid; low = mid + 1; } else { high = mid - 1; }
  }
  if (found < 0) return 'rest';
  const v = visemes[found];
  return ms < v.end_ms ? v.viseme || 'rest' : 'rest';
}

/**
 * The mouth as an SVG path centred on (cx, cy): two quadratic lips between the corners, the same
 * commands whatever the shape so that CSS can interpolate between them. While speaking the viseme
 * sets the opening and the expression keeps a little of its curve.
 */
export function mouthPath(face, viseme = null, cx = 100, cy = 152) {
  const shape = viseme ? visemeShape(viseme) : null;
  const open = shape ? shape.open : face.mouthOpen;
  const width = shape ? face.mouthWidth * 0.5 + shape.width * 0.5 : face.mouthWidth;
  const curve = shape ? face.mouthCurve * 0.4 : face.mouthCurve;
  const half = 26 * width;
  const cornerY = cy - curve * 8;
  const skew = face.mouthSkew * 7;
  const upper = cy + curve * 6 - open * 6;
  const lower = cy + curve * 6 + open * 36;
  const f = (n) => +n.toFixed(2);
  return `M ${f(cx - half)} ${f(cornerY)} Q ${f(cx)} ${f(upper)} ${f(cx + half)} ${f(cornerY - skew)} `
    + `Q ${f(cx)} ${f(lower)} ${f(cx - half)} ${f(cornerY)} Z`;
}

/** Whether a streamed state replaces the one shown: a later seq, or a later update (a restarted server). */
export function isNewer(current, next) {
  if (!next || typeof next !== 'object' || !next.state) return false;
  if (!current) return true;
  if (Number.isFinite(next.seq) && Number.isFinite(current.seq) && next.seq > current.seq) return true;
  return Boolean(next.updated_at && current.updated_at && next.updated_at > current.updated_at);
}

/** Whether the new state brings narration to speak: new, not empty, and not what was said last. */
export function newNarration(previous, next) {
  const text = (next?.narration ?? '').trim();
  return text !== '' && text !== (previous?.narration ?? '').trim();
}

/** Milliseconds before reconnect attempt `attempt` (0, 1, ...): doubling from 0.5 s to 30 s, with jitter. */
export function reconnectDelay(attempt, random = Math.random) {
  const base = Math.min(30_000, 500 * 2 ** Math.max(0, attempt));
  return Math.round(base * (0.8 + 0.4 * random()));
}

/** Bytes of a base64 string (the WAV the speak route returns). */
export function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
