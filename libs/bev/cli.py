"""`bev`: the operator's and analyst's command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bev.settings import BevSettings, TelemetrySettings

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from bev.embeddings.v1 import embeddings_pb2
    from bev.vocab import Tlp

app = typer.Typer(help="BEV: self-hosted OSINT and threat-intelligence research fleet.", no_args_is_help=True)
deploy_app = typer.Typer(help="Deployment files generated from deploy/manifest.yaml.", no_args_is_help=True)
app.add_typer(deploy_app, name="deploy")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="State directory (default: $BEV_DATA_DIR or .bev)")]


def _settings(data_dir: Path | None) -> BevSettings:
    settings = BevSettings()
    if data_dir is not None:
        settings.data_dir = data_dir
    return settings


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"bev: {message}", highlight=False, markup=False)
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
) -> None:
    """Start the fleet on this machine: embedded engines, then every service. Ctrl-C stops it."""
    from bev.engines import EngineStartError
    from bev.manifest import ManifestError, load_manifest
    from bev.secrets import SecretsUnavailable
    from bev.supervisor import FleetPlan, FleetStartError, Supervisor
    from bev.telemetry import configure_logging

    settings = _settings(data_dir)
    configure_logging("supervisor", TelemetrySettings(log_json=False))
    try:
        plan = FleetPlan.from_manifest(load_manifest(), settings.data_dir, node, free_ports, only)
        asyncio.run(Supervisor(plan, settings, health_timeout).run())
    except (ManifestError, EngineStartError, FleetStartError, SecretsUnavailable) as exc:
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
        nats_settings = NatsSettings(url=fleet["nats"]["url"], user=fleet["nats"]["user"], password=fleet["nats"]["password"])
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
    """Regenerate deploy/<node>/docker-compose.yml and deploy/oracle1/prometheus.yml from the manifest."""
    from bev.compose import main as render

    raise typer.Exit(render([]))


if __name__ == "__main__":
    app()
