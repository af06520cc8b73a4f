import { describe, expect, it } from 'vitest';
import { cpLength, cpToUtf16, splitHighlights, toUtf16Spans, utf16ToCp } from './offsets.js';

// 😀 (U+1F600) is two UTF-16 units and one code point, as Python counts it.
const ASTRAL = 'a😀b😀cd';

describe('code-point offsets', () => {
  it('convert between code points and UTF-16 indices', () => {
    expect(cpLength(ASTRAL)).toBe(6);
    expect(ASTRAL.length).toBe(8);
    expect(cpToUtf16(ASTRAL, 0)).toBe(0);
    expect(cpToUtf16(ASTRAL, 2)).toBe(3);
    expect(cpToUtf16(ASTRAL, 4)).toBe(6);
    expect(cpToUtf16(ASTRAL, 99)).toBe(8);
    expect(utf16ToCp(ASTRAL, 3)).toBe(2);
    expect(utf16ToCp(ASTRAL, 8)).toBe(6);
  });

  it('count a lone surrogate as one code point', () => {
    const lone = 'x\ud800y';
    expect(cpLength(lone)).toBe(3);
    expect(cpToUtf16(lone, 2)).toBe(2);
  });

  it('merge overlapping spans and drop empty or inverted ones', () => {
    expect(toUtf16Spans('abcdefgh', [{ start: 4, end: 6 }, { start: 1, end: 3 }, { start: 2, end: 5 },
      { start: 7, end: 7 }, { start: 6, end: 2 }])).toEqual([{ start: 1, end: 6 }]);
  });
});

describe('splitHighlights', () => {
  it('cuts the text at code-point spans', () => {
    expect(splitHighlights('hello world', [{ start: 6, end: 11 }])).toEqual([
      { text: 'hello ', cited: false }, { text: 'world', cited: true }]);
  });

  it('keeps astral characters whole: the span after an emoji does not shift', () => {
    // Python: "a😀b😀cd"[2:5] == "b😀c"
    const parts = splitHighlights(ASTRAL, [{ start: 2, end: 5 }]);
    expect(parts).toEqual([
      { text: 'a😀', cited: false }, { text: 'b😀c', cited: true }, { text: 'd', cited: false }]);
    expect(parts.map((p) => p.text).join('')).toBe(ASTRAL);
  });

  it('highlights several spans and clamps one past the end', () => {
    expect(splitHighlights('one two three', [{ start: 8, end: 50 }, { start: 0, end: 3 }])).toEqual([
      { text: 'one', cited: true }, { text: ' two ', cited: false }, { text: 'three', cited: true }]);
  });

  it('returns the plain text without spans', () => {
    expect(splitHighlights('plain', [])).toEqual([{ text: 'plain', cited: false }]);
    expect(splitHighlights('', [])).toEqual([{ text: '', cited: false }]);
  });
});
