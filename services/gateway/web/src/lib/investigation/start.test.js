import { describe, expect, it } from 'vitest';
import { lines, startBody } from './start.js';

describe('startBody', () => {
  it('leaves empty budget fields to the service and splits lines', () => {
    expect(startBody({
      target: '  browser-update.example.com ', mode: 'democratic', tlp: 'amber', maxDepth: '2', maxTokens: '',
      maxToolCalls: '150', maxWallS: '', allow: 'example.com\n\n 203.0.113.0/24 \r\n', opsec: true,
      seeds: 'https://browser-update.example.com/update.html\n', targetType: '',
    })).toEqual({
      target: 'browser-update.example.com', mode: 'democratic', tlp: 'amber',
      scope: { allow: ['example.com', '203.0.113.0/24'], opsec: true },
      seeds: ['https://browser-update.example.com/update.html'],
      budget: { max_depth: 2, max_tool_calls: 150 },
    });
  });

  it('defaults to hybrid and TLP:CLEAR and passes a chosen target type', () => {
    const body = startBody({ target: 'a.example', targetType: 'domain', maxWallS: '90.5' });
    expect(body).toMatchObject({ mode: 'hybrid', tlp: 'clear', target_type: 'domain', budget: { max_wall_s: 90.5 } });
    expect(body.scope).toEqual({ allow: [], opsec: false });
  });

  it('splits nothing into no lines', () => {
    expect(lines('')).toEqual([]);
    expect(lines(undefined)).toEqual([]);
  });
});
