// Offsets into evidence text. The swarm is Python: its offsets count code points, while JS strings
// index UTF-16 code units, so a character outside the BMP (an emoji, a CJK extension) is one unit
// there and two here. Links carry code-point offsets; these helpers convert at the edges.

function isHigh(unit) {
  return unit >= 0xd800 && unit <= 0xdbff;
}

function isLow(unit) {
  return unit >= 0xdc00 && unit <= 0xdfff;
}

/** Width in UTF-16 units of the code point at `i` (a lone surrogate is one code point, as in Python). */
function width(text, i) {
  return isHigh(text.charCodeAt(i)) && i + 1 < text.length && isLow(text.charCodeAt(i + 1)) ? 2 : 1;
}

/** The UTF-16 index of code-point offset `cp` in `text`, clamped to the text. */
export function cpToUtf16(text, cp) {
  let i = 0;
  for (let n = 0; n < cp && i < text.length; n++) i += width(text, i);
  return i;
}

/** The code-point offset of UTF-16 index `index` in `text`. */
export function utf16ToCp(text, index) {
  let n = 0;
  for (let i = 0; i < index && i < text.length; n++) i += width(text, i);
  return n;
}

/** How many code points `text` has (Python's len()). */
export function cpLength(text) {
  return utf16ToCp(text, text.length);
}

/**
 * Sorted, merged spans in UTF-16 indices from code-point spans [{start, end}]; spans outside the
 * text are clamped, empty or inverted ones dropped.
 */
export function toUtf16Spans(text, spans) {
  const converted = spans
    .filter((s) => Number.isInteger(s.start) && Number.isInteger(s.end) && s.end > s.start && s.start >= 0)
    .map((s) => ({ start: cpToUtf16(text, s.start), end: cpToUtf16(text, s.end) }))
    .filter((s) => s.end > s.start)
    .sort((a, b) => a.start - b.start);
  const merged = [];
  for (const span of converted) {
    const last = merged.at(-1);
    if (last && span.start <= last.end) last.end = Math.max(last.end, span.end);
    else merged.push({ ...span });
  }
  return merged;
}

/**
 * `text` cut into segments [{text, cited}] so that each code-point span [start, end) is one cited
 * segment; what lies between is plain. Overlapping spans merge.
 */
export function splitHighlights(text, spans) {
  const segments = [];
  let at = 0;
  for (const span of toUtf16Spans(text, spans)) {
    if (span.start > at) segments.push({ text: text.slice(at, span.start), cited: false });
    segments.push({ text: text.slice(span.start, span.end), cited: true });
    at = span.end;
  }
  if (at < text.length || segments.length === 0) segments.push({ text: text.slice(at), cited: false });
  return segments;
}
