// Small display helpers shared by the investigation pages.

export const PHASES = ['ingestion', 'hypotheses', 'correlation', 'counterfactuals', 'synthesis'];
export const MODES = ['hierarchical', 'democratic', 'hybrid', 'autonomous'];
export const STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled', 'budget_exhausted'];
export const TLPS = ['clear', 'green', 'amber', 'amber+strict', 'red'];

/** Whether an investigation with this status may still change. */
export function isActive(status) {
  return status === 'queued' || status === 'running';
}

/** The badge class (app.css .badge.ok/.warn/.bad) for a status. */
export function statusTone(status) {
  if (status === 'completed') return 'ok';
  if (status === 'running' || status === 'queued') return 'run';
  if (status === 'budget_exhausted' || status === 'cancelled') return 'warn';
  if (status === 'failed') return 'bad';
  return '';
}

/** "budget_exhausted" -> "budget exhausted". */
export function label(value) {
  return value ? String(value).replaceAll('_', ' ') : '';
}

function pad(n) {
  return String(n).padStart(2, '0');
}

/** An ISO timestamp in the browser's local time, "2026-12-01 10:00:03"; "—" when unset. */
export function formatTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** "14:03:09" from an ISO timestamp, for the timeline. */
export function formatClock(iso) {
  const full = formatTime(iso);
  return full.length > 10 ? full.slice(11) : full;
}

/** Seconds as "41 s", "3 min 05 s", "1 h 02 min". */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
}

export function formatNumber(n) {
  return Number(n || 0).toLocaleString('en-US');
}

/** A 0..1 share as a whole percentage. */
export function percent(share) {
  return Math.round(Math.min(1, Math.max(0, Number(share) || 0)) * 100);
}
