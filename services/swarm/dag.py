"""Workflows (the BEAR AI design): a DAG of typed steps, run as a DBOS durable workflow on the same
engine and queue as investigations (services/swarm/workflow.py).

A spec is a JSON object::

    {"name": "triage", "scope": {"allow": ["example.com"]},
     "steps": [{"id": "iocs", "type": "data_processing", "operation": "extract_indicators",
                "text": "beacon to hxxp://evil[.]example[.]com/payload"},
               {"id": "domains", "type": "data_processing", "operation": "filter", "depends_on": ["iocs"],
                "input": "iocs", "field": "type", "equals": "domain"},
               {"id": "summary", "type": "llm_generation", "depends_on": ["domains"],
                "prompt": "Summarise these domains: {{domains}}", "max_tokens": 128},
               {"id": "save", "type": "file_operations", "depends_on": ["summary"], "operation": "write",
                "path": "summary.txt", "content": "{{summary}}"}]}

Step types (each step has an `id`, its `type` and `depends_on`, the ids of the steps it waits for):

- ``llm_generation``: reasoning.Chat of ``prompt`` (and an optional ``system`` prompt) at ``tier``
  ("" = the swarm's tier) with ``max_tokens`` and ``temperature``; its output is the text.
- ``tool_execution``: one allowlisted RPC (`TOOLS`) with ``args`` (a JSON object, checked per tool);
  a ``collectors.Collect`` target passes the same scope check as an investigation's (the spec's
  ``scope.allow``, or by default the target's own registrable domain or address).
- ``data_processing``: a named built-in ``operation``: ``extract_indicators`` (collectors.Extract of
  ``text``; ``"{{step}}"`` extracts from an earlier output), ``filter`` (the items of step ``input``'s
  list output that have ``field``, a dotted path, and whose field ``equals`` a value and/or
  ``contains`` a text), ``merge`` (the list outputs of steps ``inputs`` concatenated, duplicates
  dropped unless ``dedupe`` is false). Outputs: the indicators [{type, value}], the kept items, the list.
- ``file_operations``: ``read`` (output: the text), ``write`` (``content``; output: {path, bytes}) or
  ``list`` (output: [{path, type, bytes}]) text files under ``<data_dir>/workflows/<workflow id>/``
  only: absolute paths, ``..`` and symbolic links that lead out are refused (the step fails saying
  so), and files (`MAX_FILE_BYTES`) and the folder (`MAX_FOLDER_BYTES`) are size-limited.

Text fields (prompts, tool arguments' strings, ``text``, ``content``) are templates: ``{{step}}``
is that step's output (text as it is, anything else as JSON) and ``{{step.key.0}}`` a part of it.
A template, ``input`` or ``inputs`` may name only steps the step depends on (directly or through
others), so that their outputs exist when it runs. Tool steps' outputs: Extract [{type, value}],
Collect [observation], Neighborhood {entities, relations, truncated}, GraphQuery {columns, rows,
truncated}, Search [hit].

Validation (`parse`) happens before the workflow is queued: unique ids, known types and fields,
dependencies on existing steps, no cycle (the message names it), references to ancestors only, at
most `MAX_STEPS` steps. Steps run one at a time in topological order (ties in the spec's order),
each as one DBOS step whose output is written to the workflow's row before the step returns: a
replica that dies mid-workflow is resumed after the last finished step. A step that fails fails the
workflow; steps that depend on it are skipped, the others still run.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import stat
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final, Literal, TypeAlias

from dbos import DBOS, SetWorkflowID
from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, ValidationError

from bev.collectors.v1 import collectors_pb2
from bev.collectors.v1.collectors_rpc import CollectorsClient
from bev.common.v1 import common_pb2
from bev.embeddings.v1 import embeddings_pb2
from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient
from bev.reasoning.v1 import reasoning_pb2
from bev.reasoning.v1.reasoning_rpc import ReasoningClient
from bev.rpc import RpcError
from bev.telemetry import get_logger
from bev.vocab import Tier, Tlp, UnknownLabel
from services.swarm import workflow
from services.swarm.roles import COLLECT
from services.swarm.scope import Scope, ScopeError
from services.swarm.store import WorkflowRow
from services.swarm.targets import UntypableTarget, infer_target

log = get_logger(__name__)

MAX_STEPS: Final = 50
MAX_SPEC_BYTES: Final = 256 * 1024
MAX_TEMPLATE: Final = 50_000          # characters of a template as written
MAX_RENDERED: Final = 200_000         # characters of a template once filled in
MAX_OUTPUT_BYTES: Final = 256 * 1024  # one step's output, as JSON
MAX_TOTAL_OUTPUT_BYTES: Final = 4 * 1024 * 1024  # all of a workflow's outputs (GetWorkflow carries them)
MAX_FILE_BYTES: Final = 128 * 1024    # one file read or written
MAX_FOLDER_BYTES: Final = 16 * 1024 * 1024  # a workflow's folder
MAX_FOLDER_ENTRIES: Final = 1000
MAX_ITEMS: Final = 1000               # observations kept from one Collect
WORKFLOW_PREFIX: Final = "dag-"       # the DBOS workflow id of workflow X is dag-X

STEP_TYPES: Final = ("llm_generation", "tool_execution", "data_processing", "file_operations")
STEP_DONE: Final = frozenset({"completed", "failed", "skipped", "cancelled"})
EXTRACT, NEIGHBORHOOD, GRAPH_QUERY, SEARCH = ("collectors.Extract", "collectors.Neighborhood",
                                              "collectors.GraphQuery", "embeddings.Search")
TOOLS: Final = (EXTRACT, COLLECT, NEIGHBORHOOD, GRAPH_QUERY, SEARCH)

_ID_PATTERN: Final = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_-]{0,63})((?:\.[A-Za-z0-9_-]+)*)\s*\}\}")

StepId = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]
Template = Annotated[str, Field(max_length=MAX_TEMPLATE)]
Json: TypeAlias = Any



class InvalidWorkflow(ValueError):
    """A spec that cannot run; the message says what to change."""


class StepFailed(Exception):
    """A step that could not do its work; the message is what the analyst reads."""


# -- the spec -------------------------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


class _Step(_Model):
    id: StepId
    depends_on: list[StepId] = Field(default_factory=list, max_length=MAX_STEPS)
    description: str = Field(default="", max_length=1000)

    def templates(self) -> list[str]:
        """The fields of this step that are templates."""
        return []

    def inputs_named(self) -> list[str]:
        """Steps whose outputs this step reads by id (not through a template)."""
        return []

    def references(self) -> list[str]:
        named = [m.group(1) for text in self.templates() for m in _TEMPLATE.finditer(text)]
        return list(dict.fromkeys([*self.inputs_named(), *named]))


class LlmStep(_Step):
    type: Literal["llm_generation"]
    prompt: Template = Field(min_length=1)
    system: Template = ""
    tier: str = Field(default="", max_length=32, description='"fast", "balanced", "powerful"; "" = the swarm\'s')
    max_tokens: int = Field(default=256, ge=1, le=4096)
    temperature: float = Field(default=0.2, ge=0, le=2)

    def templates(self) -> list[str]:
        return [self.prompt, self.system]


class ToolStep(_Step):
    type: Literal["tool_execution"]
    tool: str = Field(max_length=64)
    args: dict[str, Json] = Field(default_factory=dict)

    def templates(self) -> list[str]:
        return list(_strings(self.args))


class ExtractStep(_Step):
    """collectors.Extract of `text` (a template: "{{step}}" extracts from an earlier output)."""

    type: Literal["data_processing"]
    operation: Literal["extract_indicators"]
    text: Template = Field(min_length=1)
    scrub_pii: bool = False  # replace e-mails, phone, card and social-security numbers first

    def templates(self) -> list[str]:
        return [self.text]


class FilterStep(_Step):
    """The items of step `input`'s list output that have `field` (a dotted path into each item)
    and, if given, whose field `equals` a value and/or `contains` a text (a substring of a text
    field, an element of a list field)."""

    type: Literal["data_processing"]
    operation: Literal["filter"]
    input: StepId
    field: str = Field(min_length=1, max_length=200)
    equals: str | int | float | bool | None = None
    contains: str | None = Field(default=None, max_length=1000)
    ignore_case: bool = False

    def inputs_named(self) -> list[str]:
        return [self.input]


class MergeStep(_Step):
    """The list outputs of steps `inputs`, one after the other; equal items once unless `dedupe` is false."""

    type: Literal["data_processing"]
    operation: Literal["merge"]
    inputs: list[StepId] = Field(min_length=1, max_length=MAX_STEPS)
    dedupe: bool = True

    def inputs_named(self) -> list[str]:
        return list(self.inputs)


class ReadStep(_Step):
    type: Literal["file_operations"]
    operation: Literal["read"]
    path: str = Field(min_length=1, max_length=1024, description="relative to the workflow's folder")


class WriteStep(_Step):
    type: Literal["file_operations"]
    operation: Literal["write"]
    path: str = Field(min_length=1, max_length=1024, description="relative to the workflow's folder")
    content: str = Field(max_length=MAX_FILE_BYTES)  # a template

    def templates(self) -> list[str]:
        return [self.content]


class ListStep(_Step):
    type: Literal["file_operations"]
    operation: Literal["list"]
    path: str = Field(default="", max_length=1024, description='a folder in the workflow\'s; "" = the whole folder')


OPERATIONS: Final = {"data_processing": ("extract_indicators", "filter", "merge"),
                     "file_operations": ("read", "write", "list")}


def step_tag(value: Any) -> str | None:
    """The union's tag of a step: its type, and its operation for the types that have operations."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    operation = value.get("operation") if isinstance(value, dict) else getattr(value, "operation", None)
    if not isinstance(kind, str):
        return None
    return f"{kind}:{operation}" if kind in OPERATIONS else kind


ProcessStep = ExtractStep | FilterStep | MergeStep
FileStep = ReadStep | WriteStep | ListStep
Step = Annotated[
    Annotated[LlmStep, Tag("llm_generation")] | Annotated[ToolStep, Tag("tool_execution")]
    | Annotated[ExtractStep, Tag("data_processing:extract_indicators")]
    | Annotated[FilterStep, Tag("data_processing:filter")] | Annotated[MergeStep, Tag("data_processing:merge")]
    | Annotated[ReadStep, Tag("file_operations:read")] | Annotated[WriteStep, Tag("file_operations:write")]
    | Annotated[ListStep, Tag("file_operations:list")],
    Discriminator(step_tag)]


class ScopeSpec(_Model):
    allow: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(default_factory=list, max_length=256)


class Spec(_Model):
    name: str = Field(default="", max_length=200)
    scope: ScopeSpec = Field(default_factory=ScopeSpec)
    steps: list[Step] = Field(min_length=1)

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


# Tool arguments, checked per tool (string values may be templates; they are checked again filled in).

class _Args(_Model):
    pass


class ExtractArgs(_Args):
    text: str = Field(min_length=1, max_length=MAX_RENDERED)
    scrub_pii: bool = False


class CollectArgs(_Args):
    collector: str = Field(min_length=1, max_length=64)
    target: str = Field(min_length=1, max_length=2048)
    target_type: str = Field(default="", max_length=64, description='a STIX type ("domain-name", "url"); "" = inferred')
    opsec: bool = False
    tlp: str = Field(default="", max_length=32)


class NeighborhoodArgs(_Args):
    entity_id: str = Field(min_length=1, max_length=512)
    depth: int = Field(default=1, ge=1, le=3)
    limit: int = Field(default=200, ge=1, le=1000)


class GraphQueryArgs(_Args):
    cypher: str = Field(min_length=1, max_length=10_000)
    params: dict[str, Json] = Field(default_factory=dict)
    limit: int = Field(default=100, ge=1, le=1000)


class SearchArgs(_Args):
    query: str = Field(min_length=1, max_length=2000)
    k: int = Field(default=10, ge=1, le=100)
    mode: Literal["hybrid", "vector", "text"] = "hybrid"
    investigation_id: str = Field(default="", max_length=200)


ARGS: Final[dict[str, type[_Args]]] = {EXTRACT: ExtractArgs, COLLECT: CollectArgs, NEIGHBORHOOD: NeighborhoodArgs,
                                       GRAPH_QUERY: GraphQueryArgs, SEARCH: SearchArgs}


# -- validation -----------------------------------------------------------------------------------

def parse(spec_json: str) -> Spec:
    """The spec, validated; InvalidWorkflow saying what is wrong otherwise."""
    if len(spec_json.encode()) > MAX_SPEC_BYTES:
        raise InvalidWorkflow(f"the spec is {len(spec_json.encode())} bytes; at most {MAX_SPEC_BYTES}")
    try:
        data = json.loads(spec_json)
    except ValueError as exc:
        raise InvalidWorkflow(f"the spec is not JSON: {exc}") from None
    return validate(data)


def validate(data: Any) -> Spec:
    if not isinstance(data, dict):
        raise InvalidWorkflow("the spec must be a JSON object with a list of steps")
    steps = data.get("steps")
    if isinstance(steps, list):
        if len(steps) > MAX_STEPS:
            raise InvalidWorkflow(f"a workflow has at most {MAX_STEPS} steps; this one has {len(steps)}")
        for n, step in enumerate(steps):
            if not isinstance(step, dict):
                continue
            kind = step.get("type")
            if kind is None:
                raise InvalidWorkflow(f"{_where(steps, n)}: no type; a step is one of {', '.join(STEP_TYPES)}")
            if kind not in STEP_TYPES:
                raise InvalidWorkflow(f"{_where(steps, n)}: unknown type {str(kind)[:64]!r}; "
                                      f"a step is one of {', '.join(STEP_TYPES)}")
            if kind in OPERATIONS and step.get("operation") not in OPERATIONS[kind]:
                raise InvalidWorkflow(f"{_where(steps, n)}: {kind} operation {str(step.get('operation'))[:64]!r} "
                                      f"is not one of {', '.join(OPERATIONS[kind])}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise InvalidWorkflow(_describe(exc, steps if isinstance(steps, list) else [])) from None
    check(spec)
    return spec


def check(spec: Spec) -> None:
    """What the models cannot say: ids, dependencies, cycles, references, tool arguments, scope."""
    ids = [step.id for step in spec.steps]
    seen: set[str] = set()
    for step_id in ids:
        if step_id in seen:
            raise InvalidWorkflow(f"two steps have the id {step_id!r}; step ids must be unique")
        seen.add(step_id)
    for step in spec.steps:
        for dep in step.depends_on:
            if dep == step.id:
                raise InvalidWorkflow(f"step {step.id!r} depends on itself")
            if dep not in seen:
                raise InvalidWorkflow(f"step {step.id!r} depends on {dep!r}, which is not a step of this workflow")
        if len(set(step.depends_on)) != len(step.depends_on):
            raise InvalidWorkflow(f"step {step.id!r} names a dependency twice")
    order(spec)  # raises on a cycle
    for step in spec.steps:
        before = ancestors(spec, step.id)
        for ref in step.references():
            if ref not in seen:
                raise InvalidWorkflow(f"step {step.id!r} reads {ref!r}, which is not a step of this workflow")
            if ref not in before:
                raise InvalidWorkflow(f"step {step.id!r} reads the output of {ref!r} but does not depend on it; "
                                      f"add {ref!r} to its depends_on (or to a step it depends on)")
        if isinstance(step, LlmStep) and step.tier:
            try:
                Tier.parse(step.tier)
            except UnknownLabel as exc:
                raise InvalidWorkflow(f"step {step.id!r}: {exc}") from None
        if isinstance(step, ToolStep):
            try:
                args = tool_args(step.tool, step.args)
                if isinstance(args, CollectArgs) and not _TEMPLATE.search(args.target + args.target_type):
                    collect_target(args, spec.scope.allow)  # known now: refused now
            except StepFailed as exc:
                raise InvalidWorkflow(f"step {step.id!r}: {exc}") from None


def _where(steps: Sequence[Any], n: int) -> str:
    step = steps[n] if n < len(steps) else None
    step_id = step.get("id") if isinstance(step, dict) else None
    return f"steps[{n}] ({step_id!r})" if isinstance(step_id, str) else f"steps[{n}]"


def _describe(exc: ValidationError, steps: Sequence[Any]) -> str:
    problems = []
    for error in exc.errors()[:5]:
        loc = list(error["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            where = _where(steps, loc[1])
            loc = loc[3:] if len(loc) > 2 and str(loc[2]).split(":")[0] in STEP_TYPES else loc[2:]  # the union's tag
        path = ".".join(str(part) for part in loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}{'.' if where and path else ''}{path}: {message}" if where or path else message)
    more = len(exc.errors()) - 5
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def order(spec: Spec) -> list[str]:
    """The steps in an order that runs each after its dependencies (ties: the spec's order);
    InvalidWorkflow naming a cycle if there is one."""
    position = {step.id: n for n, step in enumerate(spec.steps)}
    waiting = {step.id: set(step.depends_on) for step in spec.steps}
    done: list[str] = []
    while True:
        ready = sorted((sid for sid, deps in waiting.items() if not deps), key=position.__getitem__)
        if not ready:
            break
        sid = ready[0]
        done.append(sid)
        del waiting[sid]
        for deps in waiting.values():
            deps.discard(sid)
    if waiting:
        cycle = _a_cycle(spec, set(waiting))
        raise InvalidWorkflow(f"the steps form a cycle: {' -> '.join(cycle)} (each depends on the next); "
                              "a workflow must be acyclic")
    return done


def _a_cycle(spec: Spec, left: set[str]) -> list[str]:
    deps = {step.id: [d for d in step.depends_on if d in left] for step in spec.steps if step.id in left}
    start = min(left, key=[s.id for s in spec.steps].index)
    path, at = [start], start
    while True:  # every step left waits on another step left: walking dependencies must loop
        at = deps[at][0]
        if at in path:
            return [*path[path.index(at):], at]
        path.append(at)


def ancestors(spec: Spec, step_id: str) -> set[str]:
    """Every step `step_id` waits for, directly or through others."""
    deps = {step.id: step.depends_on for step in spec.steps}
    out: set[str] = set()
    todo = list(deps.get(step_id, []))
    while todo:
        sid = todo.pop()
        if sid not in out:
            out.add(sid)
            todo.extend(deps.get(sid, []))
    return out


def tool_args(tool: str, args: Mapping[str, Any]) -> _Args:
    model = ARGS.get(tool)
    if model is None:
        raise StepFailed(f"tool {tool[:64]!r} is not one a workflow may call; allowed: {', '.join(TOOLS)}")
    try:
        return model.model_validate(dict(args))
    except ValidationError as exc:
        raise StepFailed(f"{tool} args: {_describe(exc, [])}") from None


def collect_target(args: CollectArgs, allow: Sequence[str]) -> tuple[str, str]:
    """(STIX type, value) of a Collect target the scope allows; StepFailed saying why not otherwise."""
    try:
        target = infer_target(args.target, args.target_type)
        scope = Scope.build(target, list(allow))
    except (UntypableTarget, ScopeError) as exc:
        raise StepFailed(f"{COLLECT} target: {exc}") from None
    refusal = scope.check(COLLECT, {"collector": args.collector, "target_type": target.stix_type,
                                    "target": target.value})
    if refusal is not None:
        raise StepFailed(f"{COLLECT} refused: {refusal}")
    return target.stix_type, target.value


def initial_states(spec: Spec) -> dict[str, dict[str, Any]]:
    return {step.id: {"status": "pending"} for step in spec.steps}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


# -- templates and transforms ---------------------------------------------------------------------

def render(template: str, outputs: Mapping[str, Any]) -> str:
    """`{{step}}` and `{{step.key.0}}` filled in from the outputs of earlier steps."""

    def one(match: re.Match[str]) -> str:
        step_id, path = match.group(1), match.group(2)
        if step_id not in outputs:
            raise StepFailed(f"{{{{{step_id}}}}} has no output (the step did not complete)")
        value = _at(outputs[step_id], [p for p in path.split(".") if p], step_id)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    text = _TEMPLATE.sub(one, template)
    if len(text) > MAX_RENDERED:
        raise StepFailed(f"the text filled in is {len(text)} characters; at most {MAX_RENDERED}")
    return text


def render_all(value: Any, outputs: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return render(value, outputs)
    if isinstance(value, dict):
        return {k: render_all(v, outputs) for k, v in value.items()}
    if isinstance(value, list):
        return [render_all(v, outputs) for v in value]
    return value


def _at(value: Any, path: Sequence[str], what: str) -> Any:
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise StepFailed(f"the output of {what} has no {key!r}")
        what = f"{what}.{key}"
    return value


_MISSING = object()


def _field(item: Any, path: Sequence[str]) -> Any:
    for key in path:
        if isinstance(item, dict) and key in item:
            item = item[key]
        elif isinstance(item, list) and key.isdigit() and int(key) < len(item):
            item = item[int(key)]
        else:
            return _MISSING
    return item


def filter_items(items: Any, field: str, *, equals: Any = None, contains: str | None = None,
                 ignore_case: bool = False, what: str = "the input") -> list[Any]:
    """The items of a list that have `field` (a dotted path: "entity.type", "tags.0") and, when given,
    whose field equals `equals` (the same JSON value; texts case-insensitively with `ignore_case`)
    and contains `contains` (a substring of a text, an element of a list)."""
    if not isinstance(items, list):
        raise StepFailed(f"filter needs a list; the output of {what} is {_kind(items)}")
    path = field.split(".")

    def fold(value: Any) -> Any:
        return value.casefold() if ignore_case and isinstance(value, str) else value

    def matches(value: Any) -> bool:
        if equals is not None and not (_same_kind(value, equals) and fold(value) == fold(equals)):
            return False
        if contains is None:
            return True
        if isinstance(value, str):
            return bool(fold(contains) in fold(value))
        if isinstance(value, list):
            return any(fold(v) == fold(contains) for v in value)
        return False

    return [item for item in items if (value := _field(item, path)) is not _MISSING and matches(value)]


def _same_kind(a: Any, b: Any) -> bool:
    """JSON's kinds: 1 and 1.0 are both numbers; true is a boolean, not the number 1."""
    def kind(value: Any) -> str:
        return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__

    return kind(a) == kind(b)


def merge_lists(lists: Sequence[tuple[str, Any]], *, dedupe: bool = True) -> list[Any]:
    """The lists (step id, output) one after the other; duplicates (equal JSON) dropped if `dedupe`."""
    out: list[Any] = []
    seen: set[str] = set()
    for step_id, items in lists:
        if not isinstance(items, list):
            raise StepFailed(f"merge needs lists; the output of {step_id} is {_kind(items)}")
        for item in items:
            if dedupe:
                key = json.dumps(item, sort_keys=True, ensure_ascii=False)
                if key in seen:
                    continue
                seen.add(key)
            out.append(item)
    return out


def _kind(value: Any) -> str:
    return {dict: "an object", str: "a text", list: "a list", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value, ensure_ascii=False)


# -- files ----------------------------------------------------------------------------------------

def folder(workflow_id: str, data_dir: Path) -> Path:
    """<data_dir>/workflows/<workflow id>: the only place a workflow's file steps reach."""
    try:  # ids are the service's own UUIDs: never a path of their own
        canonical = str(uuid.UUID(workflow_id)) == workflow_id
    except ValueError:
        canonical = False
    if not canonical:
        raise StepFailed(f"{workflow_id[:64]!r} is not a workflow id")
    return data_dir.absolute() / "workflows" / workflow_id


def contained(base: Path, path: str) -> Path:
    """`path` (relative, /-separated) inside `base`, symbolic links resolved; StepFailed if it is
    absolute, climbs with `..`, or leads out of `base` through a link."""
    if "\x00" in path:
        raise StepFailed("a path may not contain NUL")
    if "\\" in path:
        raise StepFailed(f"path {path[:200]!r} holds a backslash; separate folders with /")
    pure = PurePosixPath(path)
    if pure.is_absolute():
        raise StepFailed(f"path {path[:200]!r} is absolute; give it relative to the workflow's folder")
    if ".." in pure.parts:
        raise StepFailed(f"path {path[:200]!r} climbs out of the workflow's folder ('..' is not allowed)")
    root = base.resolve()
    target = (root / pure).resolve()
    if target != root and not target.is_relative_to(root):
        raise StepFailed(f"path {path[:200]!r} leads outside the workflow's folder (through a symbolic link)")
    return target


def _relative(root: Path, target: Path) -> str:
    return target.relative_to(root).as_posix() or "."


def read_file(base: Path, path: str) -> str:
    target = contained(base, path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise StepFailed(f"no file {path[:200]!r} in the workflow's folder") from None
    except OSError as exc:
        raise StepFailed(f"cannot read {path[:200]!r}: {_os_error(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StepFailed(f"{path[:200]!r} is not a file")
        data = b""
        while len(data) <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise StepFailed(f"{path[:200]!r} is over {MAX_FILE_BYTES} bytes; file steps read at most that")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StepFailed(f"{path[:200]!r} is not UTF-8 text") from None


def write_file(base: Path, path: str, content: str) -> dict[str, Any]:
    data = content.encode("utf-8", "surrogatepass")
    if len(data) > MAX_FILE_BYTES:
        raise StepFailed(f"the content is {len(data)} bytes; a file step writes at most {MAX_FILE_BYTES}")
    base.mkdir(parents=True, exist_ok=True)
    root = base.resolve()
    target = contained(root, path)
    if target == root:
        raise StepFailed(f"{path[:200]!r} is the workflow's folder, not a file")
    used, entries = _usage(root, skip=target)
    if used + len(data) > MAX_FOLDER_BYTES:
        raise StepFailed(f"the workflow's folder would hold {used + len(data)} bytes; at most {MAX_FOLDER_BYTES}")
    if entries >= MAX_FOLDER_ENTRIES:
        raise StepFailed(f"the workflow's folder holds {entries} entries; at most {MAX_FOLDER_ENTRIES}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        contained(root, path)  # a link swapped in meanwhile
        temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o640)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, target)  # replaces a link there, never writes through it
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        raise StepFailed(f"cannot write {path[:200]!r}: {_os_error(exc)}") from None
    return {"path": _relative(root, target), "bytes": len(data)}


def list_files(base: Path, path: str) -> list[dict[str, Any]]:
    base.mkdir(parents=True, exist_ok=True)
    root = base.resolve()
    start = contained(root, path or ".")
    if not start.is_dir():
        raise StepFailed(f"no folder {path[:200]!r} in the workflow's folder")
    out: list[dict[str, Any]] = []
    for entry in _walk(start):
        info = entry.lstat()
        kind = "link" if stat.S_ISLNK(info.st_mode) else "folder" if stat.S_ISDIR(info.st_mode) else "file"
        out.append({"path": _relative(root, entry), "type": kind, "bytes": info.st_size if kind == "file" else 0})
        if len(out) >= MAX_FOLDER_ENTRIES:
            break
    return out


def _walk(start: Path) -> Iterator[Path]:
    """Entries under `start`, sorted, not following links (a link is listed, never entered)."""
    for entry in sorted(start.iterdir()):
        yield entry
        if entry.is_dir() and not entry.is_symlink():
            yield from _walk(entry)


def _usage(root: Path, skip: Path) -> tuple[int, int]:
    used = entries = 0
    for entry in _walk(root):
        entries += 1
        info = entry.lstat()
        if stat.S_ISREG(info.st_mode) and entry != skip:
            used += info.st_size
    return used, entries


def _os_error(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link"
    return exc.strerror or type(exc).__name__


# -- running steps --------------------------------------------------------------------------------

@dataclass
class Context:
    """What a step runs with: the outputs of the steps it depends on and the clients."""

    workflow_id: str
    outputs: Mapping[str, Any]
    base: Path
    allow: Sequence[str]
    tier: str
    collectors: CollectorsClient | None = None
    embeddings: EmbeddingsClient | None = None
    reasoning: ReasoningClient | None = None
    team: str = ""  # the workflow's team: its tools read that team's objects and the shared ones only

    def access(self) -> common_pb2.Access:
        return common_pb2.Access(team=self.team, key_id=f"workflow:{self.workflow_id}")

    def client(self, name: str) -> Any:
        client = getattr(self, name)
        if client is None:
            raise StepFailed(f"no {name} client")
        return client


async def execute(step: Step, ctx: Context) -> Any:
    """Run one step; its JSON-able output, or StepFailed."""
    try:
        if isinstance(step, LlmStep):
            return await _llm(step, ctx)
        if isinstance(step, ToolStep):
            args = render_all(step.args, ctx.outputs)
            return await call_tool(step.tool, args, ctx)
        if isinstance(step, ExtractStep):
            text = render(step.text, ctx.outputs)
            return await call_tool(EXTRACT, {"text": text, "scrub_pii": step.scrub_pii}, ctx)
        if isinstance(step, FilterStep):
            return filter_items(ctx.outputs[step.input], step.field, equals=step.equals, contains=step.contains,
                                ignore_case=step.ignore_case, what=step.input)
        if isinstance(step, MergeStep):
            return merge_lists([(sid, ctx.outputs[sid]) for sid in step.inputs], dedupe=step.dedupe)
        if isinstance(step, ReadStep):
            return await asyncio.to_thread(read_file, ctx.base, step.path)
        if isinstance(step, WriteStep):
            content = render(step.content, ctx.outputs)
            return await asyncio.to_thread(write_file, ctx.base, step.path, content)
        return await asyncio.to_thread(list_files, ctx.base, step.path)
    except RpcError as exc:
        raise StepFailed(f"{exc.code.name}: {exc.message}") from None


async def _llm(step: LlmStep, ctx: Context) -> str:
    tier = Tier.parse(step.tier) if step.tier else Tier(ctx.tier)
    messages = [reasoning_pb2.ChatMessage(role="system", content=render(step.system, ctx.outputs))] \
        if step.system else []
    messages.append(reasoning_pb2.ChatMessage(role="user", content=render(step.prompt, ctx.outputs)))
    reasoning: ReasoningClient = ctx.client("reasoning")
    answer = await reasoning.Chat(reasoning_pb2.ChatRequest(
        messages=messages, max_tokens=step.max_tokens, temperature=step.temperature, tier=tier.to_proto(),
        session_id=ctx.workflow_id))
    return str(answer.text)


async def call_tool(tool: str, raw: Mapping[str, Any], ctx: Context) -> Any:
    """One allowlisted RPC with its arguments checked (and a Collect target against the scope)."""
    args = tool_args(tool, raw)
    if isinstance(args, ExtractArgs):
        collectors: CollectorsClient = ctx.client("collectors")
        answer = await collectors.Extract(collectors_pb2.ExtractRequest(text=args.text, scrub_pii=args.scrub_pii))
        return [_indicator(i) for i in answer.indicators]
    if isinstance(args, CollectArgs):
        target_type, target = collect_target(args, ctx.allow)
        try:
            tlp = Tlp.parse(args.tlp) if args.tlp.strip() else Tlp.CLEAR
        except UnknownLabel as exc:
            raise StepFailed(f"{COLLECT} args: {exc}") from None
        collectors = ctx.client("collectors")
        request = collectors_pb2.CollectRequest(
            collector=args.collector, target_type=target_type, target=target,
            investigation_id=f"workflow-{ctx.workflow_id}", opsec=args.opsec, tlp=tlp.to_proto())
        out = []
        async for obs in collectors.Collect(request):
            out.append(_observation(obs))
            if len(out) >= MAX_ITEMS:
                break
        return out
    if isinstance(args, NeighborhoodArgs):
        collectors = ctx.client("collectors")
        graph = await collectors.Neighborhood(collectors_pb2.NeighborhoodRequest(
            entity_id=args.entity_id, depth=args.depth, limit=args.limit, access=ctx.access()))
        return {"entities": [{"id": e.id, "type": e.type, "value": e.value} for e in graph.entities],
                "relations": [_relation(r) for r in graph.relations], "truncated": graph.truncated}
    if isinstance(args, GraphQueryArgs):
        if ctx.team:  # as over HTTP: raw Cypher reads every team's graph, so only admin keys may run it
            raise StepFailed(f"{tool} is for workflows submitted with an admin key (this one is team {ctx.team!r})")
        collectors = ctx.client("collectors")
        table = await collectors.GraphQuery(collectors_pb2.GraphQueryRequest(
            cypher=args.cypher, params_json=json.dumps(args.params), limit=args.limit))
        return {"columns": list(table.columns), "rows": [json.loads(row) for row in table.rows_json],
                "truncated": table.truncated}
    assert isinstance(args, SearchArgs)
    embeddings: EmbeddingsClient = ctx.client("embeddings")
    mode = {"hybrid": embeddings_pb2.SEARCH_MODE_HYBRID, "vector": embeddings_pb2.SEARCH_MODE_VECTOR,
            "text": embeddings_pb2.SEARCH_MODE_TEXT}[args.mode]
    hits = await embeddings.Search(embeddings_pb2.SearchRequest(
        query=args.query, k=args.k, mode=mode, access=ctx.access(),
        filters=embeddings_pb2.SearchFilters(investigation_id=args.investigation_id)))
    return [{"document_id": h.document_id, "title": h.title, "uri": h.uri, "start": h.start, "end": h.end,
             "excerpt": h.excerpt, "score": h.score, "source": h.source,
             "tlp": Tlp.from_proto(h.tlp, Tlp.CLEAR).value} for h in hits.hits]


def _indicator(indicator: collectors_pb2.Indicator) -> dict[str, Any]:
    out: dict[str, Any] = {"type": indicator.type, "value": indicator.value}
    if indicator.unicode_value:
        out["unicode_value"] = indicator.unicode_value
    if indicator.HasField("homoglyph"):
        glyph = indicator.homoglyph
        out["homoglyph"] = {"scripts": list(glyph.scripts), "mixed_script": glyph.mixed_script,
                            "skeleton": glyph.skeleton}
    return out


def _relation(r: collectors_pb2.Relation) -> dict[str, Any]:
    return {"source_id": r.source_id, "target_id": r.target_id, "type": r.type, "confidence": r.confidence}


def _observation(obs: collectors_pb2.Observation) -> dict[str, Any]:
    try:
        properties = json.loads(obs.entity.properties_json) if obs.entity.properties_json else {}
    except ValueError:
        properties = {}
    return {"id": obs.id, "source": obs.source, "collector": obs.collector, "confidence": obs.confidence,
            "tlp": Tlp.from_proto(obs.tlp, Tlp.CLEAR).value, "observed_at": obs.observed_at,
            "entity": {"id": obs.entity.id, "type": obs.entity.type, "value": obs.entity.value,
                       "properties": properties},
            "relations": [_relation(r) for r in obs.relations]}


# -- the durable workflow -------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(UTC).isoformat()


def _progress(steps: Mapping[str, Mapping[str, Any]]) -> float:
    return sum(1 for s in steps.values() if s.get("status") in STEP_DONE) / max(1, len(steps))


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _spec(row: WorkflowRow) -> Spec:
    return Spec.model_validate(row.spec)


async def _row(workflow_id: str) -> WorkflowRow:
    row = await workflow.deps().store.get_workflow(workflow_id)
    if row is None:
        raise LookupError(f"workflow {workflow_id} does not exist")
    return row


@DBOS.step(name="swarm.dag.begin")
async def begin(workflow_id: str) -> dict[str, Any]:
    store = workflow.deps().store
    await store.start_workflow(workflow_id)
    row = await _row(workflow_id)
    if row.finished:
        return {"finished": True, "status": row.status}
    return {"finished": False, "order": order(_spec(row))}


@DBOS.step(name="swarm.dag.step")
async def run_step(workflow_id: str, step_id: str) -> str:
    """One step of the DAG: its state and output go to the workflow's row before this returns.
    Returns the step's status; "stop" when the workflow was cancelled or had finished."""
    d = workflow.deps()
    row = await _row(workflow_id)
    state = row.steps.get(step_id, {})
    if state.get("status") in STEP_DONE:
        return str(state["status"])  # recorded before a crash: not run again
    if row.finished or row.cancel_requested:
        return "stop"
    spec = _spec(row)
    step = spec.step(step_id)
    blocked = [dep for dep in step.depends_on if row.steps.get(dep, {}).get("status") != "completed"]
    if blocked:
        skipped = {"status": "skipped", "error": f"{', '.join(blocked)} did not complete",
                   "started_at": None, "finished_at": _now()}
        await d.store.set_workflow_step(workflow_id, step_id, skipped, _progress({**row.steps, step_id: skipped}))
        return "skipped"
    started = _now()
    if not await d.store.set_workflow_step(workflow_id, step_id, {"status": "running", "started_at": started}):
        return "stop"
    outputs = {sid: row.steps[sid].get("output") for sid in ancestors(spec, step_id)}
    ctx = Context(workflow_id, outputs, folder(workflow_id, d.data_dir), spec.scope.allow, d.config.tier,
                  d.collectors, d.embeddings, d.reasoning, row.team)
    result: dict[str, Any] = {"status": "completed", "output": None, "error": "", "started_at": started}
    try:
        output = await execute(step, ctx)
        size = _size(output)
        used = sum(_size(s.get("output")) for sid, s in row.steps.items() if s.get("status") == "completed")
        if size > MAX_OUTPUT_BYTES:
            raise StepFailed(f"its output is {size} bytes as JSON; a step's output may be at most {MAX_OUTPUT_BYTES} "
                             "(narrow it: a limit, a filter)")
        if used + size > MAX_TOTAL_OUTPUT_BYTES:
            raise StepFailed(f"the workflow's outputs would be {used + size} bytes; at most {MAX_TOTAL_OUTPUT_BYTES}")
        result["output"] = output
    except StepFailed as exc:
        result.update(status="failed", error=str(exc)[:2000])
    except Exception as exc:  # a bug: the step fails with it, the workflow carries on with what does not need it
        log.exception("workflow step failed", workflow=workflow_id, step=step_id)
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
    result["finished_at"] = _now()
    steps = {**row.steps, step_id: result}
    await d.store.set_workflow_step(workflow_id, step_id, result, _progress(steps))
    return str(result["status"])


async def conclude(workflow_id: str, error: str = "") -> str:
    """Close the workflow once: cancelled if that was asked for, failed if a step failed (or `error`),
    completed otherwise; steps that did not finish are marked. Returns the final status."""
    d = workflow.deps()
    row = await d.store.get_workflow(workflow_id)
    if row is None:
        return "failed"
    if row.finished:
        return row.status
    steps = {sid: dict(state) for sid, state in row.steps.items()}
    ordered = [step["id"] for step in row.spec.get("steps", [])]
    failed = [sid for sid in ordered if steps.get(sid, {}).get("status") == "failed"]
    if row.cancel_requested:
        status, reason, left = "cancelled", "", "cancelled"
    elif error or failed:
        status, left = "failed", "skipped"
        reason = error or f"step {failed[0]!r} failed: {steps[failed[0]].get('error', '')}"
        if len(failed) > 1:
            reason += f" (and {len(failed) - 1} more failed: {', '.join(failed[1:])})"
    else:
        status, reason, left = "completed", "", "skipped"
    for sid in ordered:
        state = steps.setdefault(sid, {"status": "pending"})
        if state.get("status") not in STEP_DONE:
            note = "the workflow was cancelled" if left == "cancelled" else "the workflow ended before it ran"
            steps[sid] = {**state, "status": left, "error": note, "finished_at": _now()}
    progress = 1.0 if status == "completed" else _progress(steps)
    await d.store.finish_workflow(workflow_id, status, reason[:2000], steps, progress)
    row = await d.store.get_workflow(workflow_id)
    return row.status if row is not None else status


@DBOS.step(name="swarm.dag.finish")
async def finish(workflow_id: str, error: str = "") -> str:
    return await conclude(workflow_id, error)


@DBOS.workflow(name="swarm.dag")
async def run(workflow_id: str) -> str:
    with workflow.running_here():
        try:
            start = await begin(workflow_id)
            if start["finished"]:
                return str(start["status"])
            for step_id in start["order"]:
                if await run_step(workflow_id, step_id) == "stop":
                    break
            return str(await finish(workflow_id))
        except Exception as exc:  # a cancellation is not an Exception (DBOSWorkflowCancelledError)
            log.error("workflow failed", workflow=workflow_id, error=str(exc))
            return str(await finish(workflow_id, f"{type(exc).__name__}: {exc}"[:1000]))


async def submit(workflow_id: str) -> None:
    """Queue it on the investigations' queue, as DBOS workflow dag-<id>."""
    queue = await DBOS.retrieve_queue_async(workflow.QUEUE)
    assert queue is not None
    with SetWorkflowID(f"{WORKFLOW_PREFIX}{workflow_id}"):
        await queue.enqueue_async(run, workflow_id)


async def stop(workflow_id: str) -> None:
    """Hard stop of the DBOS workflow (queued, or in a long step); `conclude` closes the row."""
    await DBOS.cancel_workflow_async(f"{WORKFLOW_PREFIX}{workflow_id}")


def steps_in_order(row: WorkflowRow) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    """(the step as specified, its state) in the spec's order."""
    for step in row.spec.get("steps", []):
        yield step, row.steps.get(str(step.get("id")), {"status": "pending"})
