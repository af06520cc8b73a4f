// The timeline keeps to its bottom as events arrive, and leaving the page while they do is no error
// (an unhandled one fails the run).
import { afterEach, describe, expect, it } from 'vitest';
import { cleanup, render, screen } from '@testing-library/svelte';
import { flushSync, tick } from 'svelte';
import Timeline from './Timeline.svelte';

const event = (id) => ({ id, kind: 'phase', at: '2026-12-01T19:30:10Z', data: { phase: 'ingestion', progress: 0.05 } });

afterEach(cleanup);

describe('Timeline', () => {
  it('can be unmounted while it scrolls to a new event', async () => {
    const { rerender, unmount } = render(Timeline, { props: { events: [event(1)] } });
    expect(screen.getAllByTestId('event')).toHaveLength(1);
    rerender({ events: [event(1), event(2)] });
    flushSync(); // the new row and the effect that waits a tick to scroll to it
    unmount(); // before that tick
    await tick();
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(screen.queryByTestId('timeline')).toBeNull();
  });
});
