"""Prometheus's and Alertmanager's HTTP APIs, as monitoring uses them: instant queries, range
queries, the alerts Prometheus is firing, and alerts posted to Alertmanager (v2).

Every failure is a `MetricsUnavailable` whose str() is one line (the cause, not a traceback), so
the callers (the monitoring loop, the operations assistant) can report it and go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx


class MetricsUnavailable(Exception):
    """Prometheus or Alertmanager did not answer, or refused the request; str() is one line."""


@dataclass(frozen=True)
class Sample:
    """One series' value at one time (an instant vector element or a scalar)."""

    labels: dict[str, str]
    value: float
    time: float


@dataclass(frozen=True)
class Series:
    """One series over a range: (time, value) points, oldest first."""

    labels: dict[str, str]
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """One scrape target: its labels (job, instance, node, process) and its last scrape's health."""

    labels: dict[str, str]
    health: str  # up, down, unknown (not scraped yet)
    last_error: str = ""


@dataclass(frozen=True)
class FiringAlert:
    """An alert from Prometheus's /api/v1/alerts (pending alerts are left out)."""

    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    active_at: float
    value: float


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class PrometheusApi:
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def close(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        try:
            response = await self._http.get(f"{self.url}{path}", params=params)
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url} did not answer: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise MetricsUnavailable(f"Prometheus at {self.url} answered {response.status_code} without JSON") from None
        if body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus refused the query: {body.get('errorType', '')}: {body.get('error', '')}")
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query; a scalar result comes back as one sample without labels."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = await self._get("/api/v1/query", params)
        kind, result = data["resultType"], data["result"]
        if kind == "scalar":
            return [Sample({}, _number(result[1]), float(result[0]))]
        if kind != "vector":
            raise MetricsUnavailable(f"expected an instant vector from {expr!r}, got a {kind}")
        return [Sample(dict(r["metric"]), _number(r["value"][1]), float(r["value"][0])) for r in result]

    async def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        data = await self._get("/api/v1/query_range", {
            "query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"})
        return [Series(dict(r["metric"]), [(float(t), _number(v)) for t, v in r["values"]]) for r in data["result"]]

    async def alerts(self) -> list[FiringAlert]:
        """The alerts Prometheus's rules have firing now (not the pending ones)."""
        data = await self._get("/api/v1/alerts", {})
        return [
            FiringAlert(a["labels"].get("alertname", ""), dict(a["labels"]), dict(a.get("annotations", {})),
                        _parse_time(a.get("activeAt", "")), _number(str(a.get("value", "nan"))))
            for a in data["alerts"] if a.get("state") == "firing"
        ]

    async def targets(self) -> list[Target]:
        """The targets Prometheus scrapes now (its service discovery's current list), each with the
        health of its last scrape. Unlike the `up` series, a target gone from discovery (a fleet
        restarted on other ports) is not in it: its old series outlive it by the 5 min lookback."""
        data = await self._get("/api/v1/targets", {"state": "active"})
        return [Target(dict(t.get("labels", {})), str(t.get("health", "unknown")), str(t.get("lastError", "")))
                for t in data.get("activeTargets", [])]


class AlertmanagerApi:
    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def close(self) -> None:
        await self._http.aclose()

    async def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """POST /api/v2/alerts: each {labels, annotations, startsAt, endsAt?, generatorURL?}."""
        try:
            response = await self._http.post(f"{self.url}/api/v2/alerts", json=alerts)
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"Alertmanager at {self.url} did not answer: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise MetricsUnavailable(f"Alertmanager refused the alerts: {response.status_code} {response.text[:200]}")

    async def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: what Alertmanager holds now."""
        try:
            response = await self._http.get(f"{self.url}/api/v2/alerts")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"Alertmanager at {self.url}: {type(exc).__name__}: {exc}") from None
        result: list[dict[str, Any]] = response.json()
        return result
