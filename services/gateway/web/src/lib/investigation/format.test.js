import { describe, expect, it } from 'vitest';
import { formatClock, formatDuration, formatNumber, formatTime, isActive, label, percent, statusTone } from './format.js';

describe('format', () => {
  it('formats durations, numbers and shares', () => {
    expect(formatDuration(41.7)).toBe('42 s');
    expect(formatDuration(185)).toBe('3 min 05 s');
    expect(formatDuration(3720)).toBe('1 h 02 min');
    expect(formatNumber(200000)).toBe('200,000');
    expect(percent(0.554)).toBe(55);
    expect(percent(7)).toBe(100);
  });

  it('formats timestamps in local time, and unset ones as a dash', () => {
    const iso = '2026-12-01T10:00:03Z';
    const d = new Date(iso);
    expect(formatTime(iso)).toMatch(/^2026-12-0[12] \d\d:\d\d:03$/);
    const pad = (n) => String(n).padStart(2, '0');
    expect(formatClock(iso)).toBe(`${pad(d.getHours())}:${pad(d.getMinutes())}:03`);
    expect(formatTime(null)).toBe('—');
  });

  it('labels statuses', () => {
    expect(label('budget_exhausted')).toBe('budget exhausted');
    expect(statusTone('completed')).toBe('ok');
    expect(statusTone('failed')).toBe('bad');
    expect(isActive('queued')).toBe(true);
    expect(isActive('cancelled')).toBe(false);
  });
});
