import { describe, it, expect, vi, beforeEach, afterEach } from 'vitest';
import { render, waitFor, fireEvent, cleanup } from '@testing-library/svelte';
import AvatarPanel from './AvatarPanel.svelte';

const STATE = {
  investigation_id: 'inv-1', state: 'scanning', expression: 'curiosity', intensity: 0.5,
  emotions: { curiosity: 0.5, focus: 0.2, alarm: 0, joy: 0, doubt: 0, worry: 0, distress: 0 },
  gaze: { x: 0.2, y: 0 }, color: '#2f8fb8', narration: 'Scanning browser-update.example.com.',
  cause: { kind: 'phase', event_id: '3' }, personality: 'mentor', seq: 3, updated_at: '2026-12-01T10:00:00Z',
};

const json = (body, status = 200) => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });

class FakeSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    FakeSocket.all.push(this);
  }
  send() {}
  close() {}
  receive(data) { this.onmessage?.({ data: JSON.stringify(data) }); }
}

beforeEach(() => {
  FakeSocket.all = [];
  vi.stubGlobal('WebSocket', FakeSocket);
  vi.stubGlobal('fetch', vi.fn(async (url, init = {}) => {
    if (url === '/api/v1/avatar/inv-1/state') return json(STATE);
    if (url === '/api/v1/avatar/speak') {
      return json({ audio_wav_base64: 'UklGRg==', sample_rate: 16000, duration_ms: 300,
        visemes: [{ viseme: 'AI', start_ms: 0, end_ms: 300 }], phonemes: [] });
    }
    if (url === '/api/v1/avatar/inv-1/personality' && init.method === 'PUT') return json({ ...STATE, seq: 4, personality: 'red-teamer' });
    return json({ error: 'not found', code: 'NOT_FOUND' }, 404);
  }));
  // jsdom has no media playback: playing resolves at once and the audio reads as paused.
  vi.spyOn(HTMLMediaElement.prototype, 'play').mockResolvedValue(undefined);
  vi.spyOn(HTMLMediaElement.prototype, 'pause').mockImplementation(() => {});
  URL.createObjectURL ??= () => 'blob:wav';
  URL.revokeObjectURL ??= () => {};
});

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
});

const speakCalls = () => fetch.mock.calls.filter(([url]) => url === '/api/v1/avatar/speak');

describe('AvatarPanel', () => {
  it('shows the state from the server and follows the stream', async () => {
    const { getByTestId, getByRole } = render(AvatarPanel, { investigationId: 'inv-1' });
    const root = getByTestId('avatar');
    await waitFor(() => expect(root.dataset.state).toBe('scanning'));
    expect(root.dataset.expression).toBe('curiosity');
    expect(root.dataset.viseme).toBe('rest');
    expect(getByTestId('avatar-narration').textContent).toContain('Scanning browser-update.example.com.');
    expect(getByRole('img').getAttribute('aria-label')).toBe('Avatar: scanning');
    expect(document.querySelector('#avatar-personality').value).toBe('mentor');

    const ws = FakeSocket.all[0];
    expect(ws.url).toMatch(/\/api\/v1\/avatar\/inv-1\/ws$/);
    ws.onopen?.();
    ws.receive({ ...STATE, state: 'alert_discovery', expression: 'alarm', seq: 7, narration: 'A threat.' });
    await waitFor(() => expect(root.dataset.state).toBe('alert_discovery'));
    expect(root.dataset.expression).toBe('alarm');
    // An older state arriving late is ignored.
    ws.receive({ ...STATE, seq: 5, updated_at: '2026-12-01T09:00:00Z' });
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(root.dataset.state).toBe('alert_discovery');
  });

  it('starts muted and speaks new narration once unmuted', async () => {
    const { getByTestId } = render(AvatarPanel, { investigationId: 'inv-1' });
    await waitFor(() => expect(getByTestId('avatar').dataset.state).toBe('scanning'));
    const mute = getByTestId('avatar-mute');
    expect(mute.getAttribute('aria-pressed')).toBe('true');
    FakeSocket.all[0].receive({ ...STATE, seq: 4, narration: 'Muted words.' });
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(speakCalls()).toHaveLength(0);

    await fireEvent.click(mute);
    expect(mute.getAttribute('aria-pressed')).toBe('false');
    await waitFor(() => expect(speakCalls()).toHaveLength(1)); // the current narration, on the gesture
    expect(JSON.parse(speakCalls()[0][1].body)).toEqual({ text: 'Muted words.', personality: 'mentor' });

    FakeSocket.all[0].receive({ ...STATE, seq: 5, narration: 'New words.' });
    await waitFor(() => expect(speakCalls()).toHaveLength(2));
    FakeSocket.all[0].receive({ ...STATE, seq: 6, narration: 'New words.' }); // the same words: not again
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(speakCalls()).toHaveLength(2);
  });

  it('says so when the browser blocks the audio, and mutes again', async () => {
    HTMLMediaElement.prototype.play.mockRejectedValue(Object.assign(new Error('blocked'), { name: 'NotAllowedError' }));
    const { getByTestId, findByText } = render(AvatarPanel, { investigationId: 'inv-1' });
    await waitFor(() => expect(getByTestId('avatar').dataset.state).toBe('scanning'));
    await fireEvent.click(getByTestId('avatar-mute'));
    expect(await findByText(/blocked the audio/)).toBeTruthy();
    expect(getByTestId('avatar-mute').getAttribute('aria-pressed')).toBe('true');
  });

  it('changes the personality on the server', async () => {
    const { getByTestId } = render(AvatarPanel, { investigationId: 'inv-1' });
    await waitFor(() => expect(getByTestId('avatar').dataset.state).toBe('scanning'));
    const select = document.querySelector('#avatar-personality');
    select.value = 'red-teamer';
    await fireEvent.change(select);
    await waitFor(() => expect(fetch.mock.calls.some(([url, init]) => url.endsWith('/personality')
      && init.method === 'PUT' && JSON.parse(init.body).personality === 'red-teamer')).toBe(true));
    expect(select.value).toBe('red-teamer');
  });

  it('reconnects after an abnormal close', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      render(AvatarPanel, { investigationId: 'inv-1' });
      expect(FakeSocket.all).toHaveLength(1);
      FakeSocket.all[0].onclose({ code: 1006 });
      await vi.advanceTimersByTimeAsync(1000);
      expect(FakeSocket.all).toHaveLength(2);
      FakeSocket.all[1].onclose({ code: 1000 }); // a normal close is final
      await vi.advanceTimersByTimeAsync(60000);
      expect(FakeSocket.all).toHaveLength(2);
    } finally {
      vi.useRealTimers();
    }
  });
});
