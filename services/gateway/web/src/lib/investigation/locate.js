// Where a report's claim sits in the evidence it cites. A report's citations are evidence ids only;
// the verification pass (services/swarm/report.py) accepted them because the evidence contains the
// claim: an entity's value (case-folded, defanging undone, whitespace collapsed, as a whole token),
// both ends of a relationship, a hypothesis quote verbatim (whitespace aside). The same matching,
// done here, finds the offsets that a citation link highlights.

import { utf16ToCp } from './offsets.js';

// report.py's _REFANG, in its order (each pass is a str.replace over the whole text).
const REFANG = [
  ['[.]', '.'], ['(.)', '.'], ['{.}', '.'], ['[dot]', '.'], ['[://]', '://'], ['[:]', ':'],
  ['[@]', '@'], ['hxxp', 'http'],
];

// Python's str.split() also splits on the information separators \x1c-\x1f.
const SPACE = /[\s\x1c-\x1f]/;
const WORD = /[\p{L}\p{N}_]/u;

/**
 * `text` normalised the way report.py compares it, with, for each UTF-16 unit of the result, the
 * range [from, to) of `text` it came from. `fold`: case-folded and refanged too.
 */
export function normalise(text, fold) {
  let units = [];
  for (let i = 0; i < text.length;) {
    const code = text.codePointAt(i);
    const size = code > 0xffff ? 2 : 1;
    const char = text.slice(i, i + size);
    const out = fold ? char.toLowerCase() : char;
    for (let k = 0; k < out.length; k++) units.push({ c: out[k], from: i, to: i + size });
    i += size;
  }
  if (fold) {
    for (const [defanged, plain] of REFANG) units = replaceAll(units, defanged, plain);
  }
  const kept = [];
  for (const unit of units) {
    if (!SPACE.test(unit.c)) {
      kept.push(unit);
    } else if (kept.length && kept.at(-1).c !== ' ') {
      kept.push({ c: ' ', from: unit.from, to: unit.to });
    } else if (kept.length) {
      kept.at(-1).to = unit.to;
    }
  }
  if (kept.at(-1)?.c === ' ') kept.pop();
  return { text: kept.map((u) => u.c).join(''), units: kept };
}

function replaceAll(units, from, to) {
  const out = [];
  for (let i = 0; i < units.length;) {
    let hit = i + from.length <= units.length;
    for (let k = 0; hit && k < from.length; k++) hit = units[i + k].c === from[k];
    if (!hit) {
      out.push(units[i]);
      i += 1;
      continue;
    }
    const start = units[i].from;
    const end = units[i + from.length - 1].to;
    for (const c of to) out.push({ c, from: start, to: end });
    i += from.length;
  }
  return out;
}

// Whether the code point starting (after: ending) at `i` is a word character, as Python's isalnum.
function wordAt(text, i) {
  return i >= 0 && i < text.length && WORD.test(String.fromCodePoint(text.codePointAt(i)));
}

function wordBefore(text, i) {
  const low = text.charCodeAt(i - 1);
  return wordAt(text, low >= 0xdc00 && low <= 0xdfff && i >= 2 ? i - 2 : i - 1);
}

/**
 * The code-point span {start, end} of `needle` in `content`, or null. `mode` 'value': an entity
 * value or relationship end (folded, whole token); 'quote': a verbatim quote (whitespace aside).
 */
export function locate(content, needle, mode = 'quote') {
  const fold = mode === 'value';
  const hay = normalise(content, fold);
  const want = normalise(needle, fold).text;
  if (!want) return null;
  let at = hay.text.indexOf(want);
  while (at !== -1) {
    const end = at + want.length;
    const leftOk = !fold || !(wordAt(want, 0) && wordBefore(hay.text, at));
    const rightOk = !fold || !(wordBefore(want, want.length) && wordAt(hay.text, end));
    if (leftOk && rightOk) {
      return {
        start: utf16ToCp(content, hay.units[at].from),
        end: utf16ToCp(content, hay.units[end - 1].to),
      };
    }
    at = hay.text.indexOf(want, at + 1);
  }
  return null;
}
