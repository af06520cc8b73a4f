"""Monitoring over HTTP: incidents (alerts correlated by dependency, with their self-healing
actions) and the operations assistant, which answers from live figures only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import ConfigDict, Field

from bev.monitoring.v1 import monitoring_pb2
from services.gateway.deps import ADMIN, READ, ClientsDep
from services.gateway.routes.common import Body, Limit, to_json

router = APIRouter(tags=["monitoring"])

_INCIDENT_EXAMPLE = {
    "incidents": [{
        "id": "5c1f0e9a2b7d", "status": "resolved", "root": "swarm", "node": "thanos", "severity": "critical",
        "summary": "swarm on thanos: InstanceDown", "opened_at": 1796170000.2, "updated_at": 1796170031.9,
        "resolved_at": 1796170031.9, "affected": [],
        "alerts": [{"name": "InstanceDown", "source": "probe", "service": "swarm", "node": "thanos",
                    "instance": "100.64.0.1:9105", "severity": "critical",
                    "summary": "swarm on thanos (100.64.0.1:9105) failed its last 2 scrapes: down or frozen",
                    "started_at": 1796169998.1, "value": 0.0, "labels": {"job": "swarm", "process": "swarm"},
                    "resolved_at": 1796170016.4}],
        "actions": [{"kind": "restart", "target": "swarm", "node": "thanos", "outcome": "done",
                     "reason": "InstanceDown: swarm on thanos (100.64.0.1:9105) failed its last 2 scrapes",
                     "error": "", "at": 1796170000.2, "incident_id": "5c1f0e9a2b7d"}]}],
    "actions": [], "healing_dry_run": False}


@router.get("/api/v1/alerts", dependencies=[READ], responses={
    200: {"description": "Incidents, newest first, with their alerts and self-healing actions",
          "content": {"application/json": {"example": _INCIDENT_EXAMPLE}}}})
async def alerts(clients: ClientsDep, limit: Limit = 100,
                 status: Annotated[Literal["", "open", "resolved"], Query(
                     description="open or resolved; empty: both")] = "") -> dict[str, Any]:
    """The fleet's incidents: Prometheus alerts, anomalies on live series and instances that stopped
    answering, grouped by dependency (PostgreSQL down is one incident, its dependants `affected`),
    node and time window; and the latest self-healing actions."""
    answer = await clients.monitoring.ListIncidents(
        monitoring_pb2.ListIncidentsRequest(status=status, limit=limit))
    return to_json(answer)


class AskBody(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"question": "why is reasoning slow?"}]})

    question: str = Field(min_length=1, max_length=2000)


@router.post("/api/v1/ops/ask", dependencies=[ADMIN], responses={
    200: {"description": "The answer, the queries run and every figure the answer may quote",
          "content": {"application/json": {"example": {
              "answer": "reasoning's p99 latency over the last 5m is 2.31 s (F1), the slowest service; the next slowest is swarm at 190 ms (F4).",
              "subject": "reasoning", "model": "smollm2-135m-instruct", "unsupported": [], "incidents": [],
              "queries": [{"name": "latency_p99_by_service", "series": 6, "error": "",
                           "promql": "histogram_quantile(0.99, sum by (service, le) "
                                     "(rate(bev_rpc_latency_seconds_bucket[5m])))"}],
              "figures": [{"id": "F1", "query": "latency_p99_by_service", "labels": {"service": "reasoning"},
                           "value": 2.31, "text": "2.31 s"}]}}}}})
async def ask(body: AskBody, clients: ClientsDep) -> dict[str, Any]:
    """The operations assistant (admin keys): answers a question about the fleet ("why is reasoning
    slow?") from allowlisted PromQL queries, open incidents and fleet health. Every figure in the
    answer is one a query returned; sentences quoting any other number are moved to `unsupported`."""
    answer = await clients.monitoring.Ask(monitoring_pb2.AskRequest(question=body.question), timeout_s=90)
    return to_json(answer)
