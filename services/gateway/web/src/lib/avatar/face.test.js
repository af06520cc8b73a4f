import { describe, it, expect } from 'vitest';
import {
  STATES, EMOTIONS, expressionFor, faceParams, colorFor, gazeOffset, visemeShape, visemeAt, mouthPath, isNewer,
  newNarration, reconnectDelay, base64Bytes,
} from './face.js';

describe('expressionFor', () => {
  it("keeps the server's expression and falls back on the state's", () => {
    expect(expressionFor('alarm', 'idle')).toBe('alarm');
    expect(expressionFor('', 'alert_discovery')).toBe('alarm');
    expect(expressionFor('bewildered', 'celebration_success')).toBe('joy');
    expect(expressionFor(undefined, 'nonsense')).toBe('neutral');
  });

  it('has an expression for every state', () => {
    for (const state of STATES) expect(expressionFor(null, state)).toMatch(/^(neutral|curiosity|focus|alarm|joy|doubt|worry|distress)$/);
  });
});

describe('faceParams', () => {
  it('is the neutral face for neutral, whatever the intensity', () => {
    expect(faceParams('neutral', 1)).toEqual(faceParams('neutral', 0));
  });

  it('moves further from neutral as the intensity grows', () => {
    const neutral = faceParams('neutral');
    const faint = faceParams('alarm', 0);
    const strong = faceParams('alarm', 1);
    expect(faint.eyeOpen).toBeGreaterThan(neutral.eyeOpen);
    expect(strong.eyeOpen).toBeGreaterThan(faint.eyeOpen);
    expect(strong.browY).toBeLessThan(faint.browY);
  });

  it('smiles for joy and frowns for distress, with inner brows up when worried', () => {
    expect(faceParams('joy', 1).mouthCurve).toBeGreaterThan(0.5);
    expect(faceParams('distress', 1).mouthCurve).toBeLessThan(-0.5);
    expect(faceParams('worry', 1).browTilt).toBeGreaterThan(5);
    expect(faceParams('focus', 1).browTilt).toBeLessThan(-5);
  });

  it('gives every emotion a face that differs from neutral', () => {
    const neutral = JSON.stringify(faceParams('neutral'));
    for (const emotion of EMOTIONS) expect(JSON.stringify(faceParams(emotion, 0.5))).not.toBe(neutral);
  });

  it('clamps the intensity', () => {
    expect(faceParams('joy', 7)).toEqual(faceParams('joy', 1));
    expect(faceParams('joy', Number.NaN)).toEqual(faceParams('joy', 0));
  });
});

describe('colorFor', () => {
  it('takes hex colours only', () => {
    expect(colorFor('#d94f3d', 'idle')).toBe('#d94f3d');
    expect(colorFor('red; background: url(x)', 'alert_discovery')).toBe('#d94f3d');
    expect(colorFor(undefined, 'unknown')).toBe('#5b7db1');
  });
});

describe('gazeOffset', () => {
  it('moves the pupils right for x > 0 and up for y > 0, within bounds', () => {
    expect(gazeOffset({ x: 0.5, y: 0.5 }, 6)).toEqual({ dx: 3, dy: -3 });
    expect(gazeOffset({ x: 4, y: -4 }, 6)).toEqual({ dx: 6, dy: 6 });
    expect(gazeOffset(null)).toEqual({ dx: 0, dy: 0 });
  });
});

describe('visemes', () => {
  const visemes = [
    { viseme: 'MBP', start_ms: 0, end_ms: 80 },
    { viseme: 'AI', start_ms: 80, end_ms: 200 },
    { viseme: 'O', start_ms: 250, end_ms: 400 },
  ];

  it('finds the viseme at a time, rest between and after', () => {
    expect(visemeAt(visemes, 0)).toBe('MBP');
    expect(visemeAt(visemes, 79)).toBe('MBP');
    expect(visemeAt(visemes, 80)).toBe('AI');
    expect(visemeAt(visemes, 220)).toBe('rest');
    expect(visemeAt(visemes, 399)).toBe('O');
    expect(visemeAt(visemes, 400)).toBe('rest');
    expect(visemeAt(visemes, -5)).toBe('rest');
    expect(visemeAt([], 10)).toBe('rest');
    expect(visemeAt(undefined, 10)).toBe('rest');
  });

  it('shapes known visemes in any case and unknown ones as a generic mouth', () => {
    expect(visemeShape('MBP').open).toBe(0);
    expect(visemeShape('ai').open).toBeGreaterThan(0.5);
    expect(visemeShape('O').width).toBeLessThan(1);
    expect(visemeShape('CDGKNRSThYZ')).toEqual(visemeShape('etc'));
  });
});

describe('mouthPath', () => {
  const commands = (path) => path.replace(/[-\d.]+/g, 'n');

  it('keeps the same commands for every shape so that CSS can interpolate', () => {
    const shapes = [mouthPath(faceParams('neutral')), mouthPath(faceParams('joy', 1)),
      mouthPath(faceParams('alarm', 1), 'O'), mouthPath(faceParams('doubt', 0.3), 'rest')];
    expect(new Set(shapes.map(commands)).size).toBe(1);
  });

  it('opens the mouth for an open viseme and closes it for MBP', () => {
    const face = faceParams('neutral');
    const lowerLip = (path) => Number(path.split(' ')[10]);
    expect(lowerLip(mouthPath(face, 'AI'))).toBeGreaterThan(lowerLip(mouthPath(face, 'MBP')));
  });
});

describe('isNewer', () => {
  it('takes later seqs and later updates', () => {
    const current = { state: 'idle', seq: 5, updated_at: '2026-12-01T10:00:00Z' };
    expect(isNewer(null, current)).toBe(true);
    expect(isNewer(current, { ...current, seq: 6 })).toBe(true);
    expect(isNewer(current, { ...current, seq: 4 })).toBe(false);
    expect(isNewer(current, { ...current, seq: 1, updated_at: '2026-12-01T10:05:00Z' })).toBe(true);
    expect(isNewer(current, { error: 'no avatar' })).toBe(false);
  });
});

describe('newNarration', () => {
  it('speaks new, non-empty narration once', () => {
    expect(newNarration(null, { narration: 'Scanning the target.' })).toBe(true);
    expect(newNarration({ narration: 'Scanning the target.' }, { narration: 'Scanning the target. ' })).toBe(false);
    expect(newNarration({ narration: 'a' }, { narration: '' })).toBe(false);
    expect(newNarration({ narration: 'a' }, { narration: 'b' })).toBe(true);
  });
});

describe('reconnectDelay', () => {
  it('doubles up to a ceiling, with jitter', () => {
    const mid = () => 0.5;
    expect(reconnectDelay(0, mid)).toBe(500);
    expect(reconnectDelay(3, mid)).toBe(4000);
    expect(reconnectDelay(20, mid)).toBe(30000);
    expect(reconnectDelay(0, () => 0)).toBe(400);
  });
});

describe('base64Bytes', () => {
  it('decodes', () => {
    expect(Array.from(base64Bytes('UklGRg=='))).toEqual([82, 73, 70, 70]);
  });
});
