import { describe, expect, it } from 'vitest';
import { locate, normalise } from './locate.js';

describe('locate', () => {
  it('finds a quote verbatim, whitespace differences aside', () => {
    const content = 'Line one.\n  Download   the\tupdate now.';
    const span = locate(content, 'Download the update', 'quote');
    expect(content.slice(span.start, span.end)).toBe('Download   the\tupdate');
  });

  it('keeps case for quotes', () => {
    expect(locate('Download now', 'download now', 'quote')).toBeNull();
  });

  it('finds a value case-insensitively, defanged, as a whole token', () => {
    const content = 'beacon to hxxp://Evil[.]Example[.]com/p and 127.77.0.10';
    const span = locate(content, 'http://evil.example.com/p', 'value');
    expect(content.slice(span.start, span.end)).toBe('hxxp://Evil[.]Example[.]com/p');
    expect(locate(content, '127.77.0.1', 'value')).toBeNull();
    expect(locate('example.community', 'example.com', 'value')).toBeNull();
    expect(locate('see example.com.', 'example.com', 'value')).toEqual({ start: 4, end: 15 });
  });

  it('skips an occurrence inside a longer token for the next whole one', () => {
    expect(locate('10.0.0.10 10.0.0.1', '10.0.0.1', 'value')).toEqual({ start: 10, end: 18 });
  });

  it('returns code-point offsets after astral characters', () => {
    const content = '😀😀 host evil.example.com';
    const span = locate(content, 'evil.example.com', 'value');
    expect(span).toEqual({ start: 8, end: 24 });
    expect([...content].slice(span.start, span.end).join('')).toBe('evil.example.com');
  });

  it('finds nothing for an empty needle', () => {
    expect(locate('text', '   ', 'quote')).toBeNull();
  });
});

describe('normalise', () => {
  it('maps each unit back to the original text', () => {
    const { text, units } = normalise('  A [.] b  ', true);
    expect(text).toBe('a . b');
    expect(units[2]).toEqual({ c: '.', from: 4, to: 7 });
  });
});
