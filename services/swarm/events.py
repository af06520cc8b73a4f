"""The investigation event's JSON schema (services/swarm/events.schema.json): what `kind` an event
has and which `data` fields each kind carries, for whoever consumes BEV_EVENTS."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator


@cache
def schema() -> dict[str, Any]:
    return dict(json.loads(resources.files("services.swarm").joinpath("events.schema.json").read_text()))


def problems(event: Mapping[str, Any]) -> list[str]:
    """What is wrong with an event ({id, investigation_id, kind, at, data}); empty if it is valid."""
    validator = Draft202012Validator(schema())
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(event)'}: {e.message}"
            for e in validator.iter_errors(dict(event))]
