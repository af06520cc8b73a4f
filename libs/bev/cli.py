"""`bev`: the operator's and analyst's command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bev.settings import BevSettings, TelemetrySettings

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


async def _status(data_dir: Path) -> list[dict[str, Any]]:
    from bev.bus import connect_nats
    from bev.fleet import discover
    from bev.settings import NatsSettings
    from bev.supervisor import read_fleet_file

    settings = BevSettings()
    nats_settings = settings.nats
    if "BEV_NATS__URL" not in os.environ:
        fleet = read_fleet_file(data_dir)
        nats_settings = NatsSettings(url=fleet["nats"]["url"], user=fleet["nats"]["user"], password=fleet["nats"]["password"])
    nc = await connect_nats(nats_settings.model_copy(update={"connect_timeout_s": 5.0}), "bev-cli")
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
    from bev.fleet import FLEET_SERVICES

    try:
        instances = asyncio.run(_status(_settings(data_dir).data_dir))
    except (FileNotFoundError, BusUnavailable) as exc:
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
    missing = [s for s in FLEET_SERVICES if s not in {i["service"] for i in instances}]
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


@deploy_app.command("render")
def deploy_render() -> None:
    """Regenerate deploy/<node>/docker-compose.yml and deploy/oracle1/prometheus.yml from the manifest."""
    from bev.compose import main as render

    raise typer.Exit(render([]))


if __name__ == "__main__":
    app()
