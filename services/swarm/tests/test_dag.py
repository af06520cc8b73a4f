"""Workflow DAGs (services/swarm/dag.py) without a fleet: validation, cycles, topological order,
templates, the filter and merge transforms, tool arguments and the scope, and the file steps'
containment in the workflow's folder (absolute paths, `..`, symbolic links)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.swarm import dag
from services.swarm.dag import InvalidWorkflow, StepFailed


def spec(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "test", "steps": list(steps), **extra}


def llm(id: str, prompt: str = "hello", **more: Any) -> dict[str, Any]:
    return {"id": id, "type": "llm_generation", "prompt": prompt, **more}


def extract(id: str, text: str = "evil[.]example[.]com", **more: Any) -> dict[str, Any]:
    return {"id": id, "type": "data_processing", "operation": "extract_indicators", "text": text, **more}


def invalid(data: Any) -> str:
    with pytest.raises(InvalidWorkflow) as caught:
        dag.parse(json.dumps(data))
    return str(caught.value)


# -- validation -----------------------------------------------------------------------------------

def test_a_full_spec_parses_with_defaults_filled_in() -> None:
    parsed = dag.parse(json.dumps(spec(
        extract("iocs", "beacon to hxxp://evil[.]example[.]com/payload and 198.51.100[.]7"),
        {"id": "domains", "type": "data_processing", "operation": "filter", "depends_on": ["iocs"],
         "input": "iocs", "field": "type", "equals": "domain"},
        llm("summary", "Summarise {{domains}}", depends_on=["domains"], tier="Fast", max_tokens=64),
        {"id": "save", "type": "file_operations", "operation": "write", "depends_on": ["summary"],
         "path": "out/summary.txt", "content": "{{summary}}"},
        {"id": "load", "type": "file_operations", "operation": "read", "depends_on": ["save"], "path": "out/summary.txt"},
        {"id": "ls", "type": "file_operations", "operation": "list", "depends_on": ["save"]},
        {"id": "graph", "type": "tool_execution", "tool": "collectors.GraphQuery",
         "args": {"cypher": "MATCH (e:Entity) WHERE e.value = $v RETURN e.id", "params": {"v": "{{domains.0.value}}"}},
         "depends_on": ["domains"]},
        {"id": "all", "type": "data_processing", "operation": "merge", "inputs": ["iocs", "domains"],
         "depends_on": ["iocs", "domains"]},
    )))
    assert [s.id for s in parsed.steps] == ["iocs", "domains", "summary", "save", "load", "ls", "graph", "all"]
    summary = parsed.step("summary")
    assert isinstance(summary, dag.LlmStep) and summary.max_tokens == 64 and summary.temperature == 0.2
    assert isinstance(parsed.step("ls"), dag.ListStep) and isinstance(parsed.step("all"), dag.MergeStep)
    dumped = parsed.model_dump(mode="json")
    assert dag.validate(dumped) == parsed  # what the service stores parses back to the same spec


@pytest.mark.parametrize(("data", "message"), [
    ([], "JSON object"),
    ({"steps": []}, "steps: List should have at least 1 item"),
    (spec(llm("a"), llm("a")), "two steps have the id 'a'"),
    (spec({"id": "a", "type": "shell", "command": "rm -rf /"}), "steps[0] ('a'): unknown type 'shell'"),
    (spec({"id": "a", "prompt": "x"}), "steps[0] ('a'): no type"),
    (spec({"id": "a", "type": "data_processing", "operation": "sort"}), "operation 'sort' is not one of"),
    (spec({"id": "a", "type": "file_operations", "operation": "delete", "path": "x"}), "operation 'delete'"),
    (spec(llm("a", depends_on=["b"])), "step 'a' depends on 'b', which is not a step of this workflow"),
    (spec(llm("a", depends_on=["a"])), "step 'a' depends on itself"),
    (spec(llm("a"), llm("b", depends_on=["a", "a"])), "names a dependency twice"),
    (spec(llm("a", "{{b}}"), llm("b")), "step 'a' reads the output of 'b' but does not depend on it"),
    (spec(llm("a", "{{nope}}")), "step 'a' reads 'nope', which is not a step of this workflow"),
    (spec(llm("a", bogus=1)), "steps[0] ('a').bogus: Extra inputs are not permitted"),
    (spec(llm("a", max_tokens=0)), "steps[0] ('a').max_tokens: Input should be greater than or equal to 1"),
    (spec(llm("a", max_tokens="64")), "max_tokens: Input should be a valid integer"),
    (spec(llm("a", tier="huge")), "step 'a': unknown tier 'huge'"),
    (spec(llm("bad id")), "steps[0] ('bad id').id: String should match pattern"),
    (spec({"id": "t", "type": "tool_execution", "tool": "collectors.ExportStix", "args": {}}),
     "tool 'collectors.ExportStix' is not one a workflow may call"),
    (spec({"id": "t", "type": "tool_execution", "tool": "collectors.Extract", "args": {"txt": "x"}}),
     "collectors.Extract args: text: Field required"),
    (spec({"id": "f", "type": "data_processing", "operation": "filter", "field": "type"}), "input: Field required"),
    (spec({"id": "w", "type": "file_operations", "operation": "write", "path": "x"}), "content: Field required"),
    (spec({"id": "r", "type": "file_operations", "operation": "read", "path": ""}), "path: String should have at least"),
    ({"steps": [llm(f"s{n}") for n in range(51)]}, "at most 50 steps; this one has 51"),
])
def test_invalid_specs_are_refused_saying_why(data: Any, message: str) -> None:
    assert message in invalid(data)


def test_not_json_and_too_big() -> None:
    with pytest.raises(InvalidWorkflow, match="not JSON"):
        dag.parse("{")
    with pytest.raises(InvalidWorkflow, match="bytes; at most"):
        dag.parse(json.dumps(spec(llm("a", "x" * 49_000), llm("b", "y" * 49_000), llm("c", "z" * 49_000),
                                  llm("d", "w" * 49_000), llm("e", "v" * 49_000), llm("f", "u" * 49_000))))


def test_cycles_are_named() -> None:
    message = invalid(spec(llm("a", depends_on=["c"]), llm("b", depends_on=["a"]), llm("c", depends_on=["b"])))
    assert "the steps form a cycle: a -> c -> b -> a (each depends on the next)" in message
    # a step that only waits on a cycle is not part of the one named
    message = invalid(spec(llm("x", depends_on=["a"]), llm("a", depends_on=["b"]), llm("b", depends_on=["a"])))
    assert "cycle: a -> b -> a" in message


def test_the_topological_order_keeps_the_spec_order_for_ties() -> None:
    parsed = dag.parse(json.dumps(spec(
        llm("d", depends_on=["b", "c"]), llm("c", depends_on=["a"]), llm("b", depends_on=["a"]), llm("a"),
        llm("e"))))
    assert dag.order(parsed) == ["a", "c", "b", "d", "e"]
    assert dag.ancestors(parsed, "d") == {"a", "b", "c"}
    assert dag.ancestors(parsed, "a") == set()


def test_a_reference_through_a_dependency_chain_is_allowed() -> None:
    dag.parse(json.dumps(spec(llm("a"), llm("b", depends_on=["a"]), llm("c", "{{a}} and {{b}}", depends_on=["b"]))))


def test_collect_targets_pass_the_investigations_scope_check() -> None:
    def collect(target: str, **args: Any) -> dict[str, Any]:
        return spec({"id": "c", "type": "tool_execution", "tool": "collectors.Collect",
                     "args": {"collector": "web", "target": target, **args}})

    dag.parse(json.dumps(collect("https://www.example.com/page")))  # default scope: its own domain
    assert "169.254.169.254" in invalid(collect("http://169.254.169.254/latest/meta-data/"))
    assert "special-use" in invalid(collect("http://app.localhost/", target_type="url"))
    assert "a single-label name" in invalid(collect("http://localhost:8080/", target_type="url"))
    assert "cannot infer the type of 'http://localhost:8080/'" in invalid(collect("http://localhost:8080/"))
    assert "carries userinfo" in invalid(collect("http://example.com@evil.example.org/"))
    assert "excludes the target" in invalid(spec(
        {"id": "c", "type": "tool_execution", "tool": "collectors.Collect",
         "args": {"collector": "web", "target": "https://evil.example.org/"}}, scope={"allow": ["example.com"]}))
    assert "not a valid url" in invalid(collect("example.com", target_type="url"))
    # a target filled in from an earlier step is checked when the step runs
    dag.parse(json.dumps(spec(extract("i"), {"id": "c", "type": "tool_execution", "tool": "collectors.Collect",
                                             "depends_on": ["i"],
                                             "args": {"collector": "dns", "target": "{{i.0.value}}"}})))
    with pytest.raises(StepFailed, match=re.escape("169.254.0.0/16")):
        dag.collect_target(dag.CollectArgs(collector="web", target="http://169.254.169.254/"), [])
    assert dag.collect_target(dag.CollectArgs(collector="dns", target="Evil.Example.COM"), []) == \
        ("domain-name", "evil.example.com")


# -- templates and transforms ---------------------------------------------------------------------

def test_templates_fill_in_outputs() -> None:
    outputs = {"a": "text", "b": [{"type": "domain", "value": "x.example"}], "c": {"n": 3}}
    assert dag.render("{{a}}|{{ b.0.value }}|{{c.n}}|{{c}}|{{ not a ref }}", outputs) == \
        'text|x.example|3|{"n": 3}|{{ not a ref }}'
    with pytest.raises(StepFailed, match=re.escape("the output of b.0 has no 'host'")):
        dag.render("{{b.0.host}}", outputs)
    with pytest.raises(StepFailed, match="has no output"):
        dag.render("{{z}}", outputs)
    assert dag.render_all({"q": ["{{a}}", 1], "p": {"x": "{{c.n}}"}}, outputs) == {"q": ["text", 1], "p": {"x": "3"}}


ITEMS: list[Any] = [
    {"type": "domain", "value": "evil.example.com"},
    {"type": "url", "value": "http://evil.example.com/payload"},
    {"type": "ipv4", "value": "198.51.100.7"},
    {"type": "Domain", "value": "other.example.org", "tags": ["c2", "phish"]},
    {"value": "no type"},
    "not an object",
    {"type": "number", "value": 1},
    {"type": "flag", "value": True},
]


def test_filter_keeps_items_whose_field_equals_or_contains() -> None:
    assert dag.filter_items(ITEMS, "type", equals="domain") == [ITEMS[0]]
    assert dag.filter_items(ITEMS, "type", equals="DOMAIN", ignore_case=True) == [ITEMS[0], ITEMS[3]]
    assert dag.filter_items(ITEMS, "value", contains="evil.example") == [ITEMS[0], ITEMS[1]]
    assert dag.filter_items(ITEMS, "tags", contains="c2") == [ITEMS[3]]
    assert dag.filter_items(ITEMS, "tags.1", equals="phish") == [ITEMS[3]]
    assert dag.filter_items(ITEMS, "type") == [ITEMS[i] for i in (0, 1, 2, 3, 6, 7)]  # has the field
    assert dag.filter_items(ITEMS, "value", equals=1) == [ITEMS[6]]  # true is not the number 1
    assert dag.filter_items(ITEMS, "value", equals=1.0) == [ITEMS[6]]
    assert dag.filter_items(ITEMS, "value", equals=True) == [ITEMS[7]]
    assert dag.filter_items(ITEMS, "type", equals="url", contains="ur") == [ITEMS[1]]
    with pytest.raises(StepFailed, match="filter needs a list; the output of x is a text"):
        dag.filter_items("text", "type", equals="domain", what="x")


def test_merge_concatenates_and_dedupes() -> None:
    a = [{"type": "domain", "value": "a.example"}, {"value": 1, "type": "n"}]
    b = [{"type": "n", "value": 1}, "x", {"type": "domain", "value": "b.example"}, "x"]
    assert dag.merge_lists([("a", a), ("b", b)]) == [*a, "x", b[2]]
    assert dag.merge_lists([("a", a), ("b", b)], dedupe=False) == [*a, *b]
    with pytest.raises(StepFailed, match="merge needs lists; the output of b is an object"):
        dag.merge_lists([("a", a), ("b", {"k": 1})])


def test_data_steps_run_from_earlier_outputs(tmp_path: Path) -> None:
    parsed = dag.parse(json.dumps(spec(
        extract("i"),
        {"id": "f", "type": "data_processing", "operation": "filter", "input": "i", "field": "type",
         "equals": "domain", "depends_on": ["i"]},
        {"id": "m", "type": "data_processing", "operation": "merge", "inputs": ["f", "i"], "depends_on": ["f"]})))
    ctx = dag.Context(str(uuid.uuid4()), {"i": ITEMS[:3], "f": [ITEMS[0]]}, tmp_path, [], "fast")
    assert asyncio.run(dag.execute(parsed.step("f"), ctx)) == [ITEMS[0]]
    assert asyncio.run(dag.execute(parsed.step("m"), ctx)) == ITEMS[:3]
    with pytest.raises(StepFailed, match="no collectors client"):
        asyncio.run(dag.execute(parsed.step("i"), ctx))


# -- files ----------------------------------------------------------------------------------------

@pytest.fixture
def base(tmp_path: Path) -> Path:
    folder = tmp_path / "workflows" / "wf"
    folder.mkdir(parents=True)
    return folder


def test_files_round_trip_inside_the_folder(base: Path) -> None:
    assert dag.write_file(base, "summary.txt", "héllo\n") == {"path": "summary.txt", "bytes": 7}
    assert dag.write_file(base, "notes/./day1.txt", "one") == {"path": "notes/day1.txt", "bytes": 3}
    assert dag.read_file(base, "summary.txt") == "héllo\n"
    assert dag.read_file(base, "./notes/day1.txt") == "one"
    assert dag.write_file(base, "summary.txt", "again")["bytes"] == 5  # overwritten
    assert dag.list_files(base, "") == [{"path": "notes", "type": "folder", "bytes": 0},
                                        {"path": "notes/day1.txt", "type": "file", "bytes": 3},
                                        {"path": "summary.txt", "type": "file", "bytes": 5}]
    assert dag.list_files(base, "notes") == [{"path": "notes/day1.txt", "type": "file", "bytes": 3}]
    assert sorted(p.name for p in base.iterdir()) == ["notes", "summary.txt"]  # no temporary left


@pytest.mark.parametrize(("path", "message"), [
    ("../../etc/passwd", "climbs out of the workflow's folder ('..' is not allowed)"),
    ("notes/../../x", "'..' is not allowed"),
    ("..", "'..' is not allowed"),
    ("/etc/passwd", "is absolute"),
    ("//etc/passwd", "is absolute"),
    ("..\\x", "holds a backslash"),
    ("a\x00b", "NUL"),
])
def test_paths_that_leave_the_folder_are_refused(base: Path, path: str, message: str) -> None:
    outside = base.parent / "outside.txt"
    for run in (lambda: dag.write_file(base, path, "pwned"), lambda: dag.read_file(base, path),
                lambda: dag.list_files(base, path)):
        with pytest.raises(StepFailed, match=re.escape(message)):
            run()
    assert not outside.exists()
    assert list(base.iterdir()) == []


def test_symbolic_links_out_of_the_folder_are_refused(base: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, base / "escape")
    os.symlink(outside / "secret.txt", base / "secret.txt")
    os.symlink(tmp_path / "nowhere.txt", base / "dangling.txt")
    for path in ("escape/secret.txt", "secret.txt", "escape", "dangling.txt", "escape/new.txt"):
        with pytest.raises(StepFailed, match="leads outside the workflow's folder"):
            dag.write_file(base, path, "pwned")
        with pytest.raises(StepFailed, match="leads outside"):
            dag.read_file(base, path)
    with pytest.raises(StepFailed, match="leads outside"):
        dag.list_files(base, "escape")
    assert (outside / "secret.txt").read_text() == "secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert not (tmp_path / "nowhere.txt").exists()
    # a listing shows the links but does not enter them
    assert {e["path"]: e["type"] for e in dag.list_files(base, "")} == {
        "dangling.txt": "link", "escape": "link", "secret.txt": "link"}
    # a link that stays inside is followed
    dag.write_file(base, "real.txt", "inside")
    os.symlink(base / "real.txt", base / "alias.txt")
    assert dag.read_file(base, "alias.txt") == "inside"


def test_the_folder_itself_is_a_symlink_to_elsewhere(tmp_path: Path) -> None:
    """A data_dir reached through a link (e.g. /var/lib -> /data) still works: containment is
    judged against the folder's real path."""
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    assert dag.write_file(tmp_path / "link", "a.txt", "x") == {"path": "a.txt", "bytes": 1}
    assert (real / "a.txt").read_text() == "x"


def test_sizes_are_limited(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StepFailed, match="a file step writes at most"):
        dag.write_file(base, "big.txt", "x" * (dag.MAX_FILE_BYTES + 1))
    (base / "huge.txt").write_bytes(b"x" * (dag.MAX_FILE_BYTES + 1))
    with pytest.raises(StepFailed, match="file steps read at most"):
        dag.read_file(base, "huge.txt")
    (base / "binary.bin").write_bytes(b"\xff\xfe")
    with pytest.raises(StepFailed, match="not UTF-8 text"):
        dag.read_file(base, "binary.bin")
    with pytest.raises(StepFailed, match=re.escape("no file 'missing.txt'")):
        dag.read_file(base, "missing.txt")
    (base / "dir").mkdir()
    with pytest.raises(StepFailed, match=r"is not a file|cannot read"):
        dag.read_file(base, "dir")
    monkeypatch.setattr(dag, "MAX_FOLDER_BYTES", dag.MAX_FILE_BYTES + 10)
    with pytest.raises(StepFailed, match="the workflow's folder would hold"):
        dag.write_file(base, "more.txt", "y" * 20)


def test_the_folder_is_named_by_a_workflow_id_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow_id = str(uuid.uuid4())
    assert dag.folder(workflow_id, tmp_path) == tmp_path.absolute() / "workflows" / workflow_id
    for bad in ("../x", "", workflow_id.upper(), "{" + workflow_id + "}"):
        with pytest.raises(StepFailed, match="is not a workflow id"):
            dag.folder(bad, tmp_path)


def test_file_steps_run_through_execute(tmp_path: Path) -> None:
    parsed = dag.parse(json.dumps(spec(
        llm("s"),
        {"id": "w", "type": "file_operations", "operation": "write", "path": "summary.txt",
         "content": "Summary: {{s}}", "depends_on": ["s"]},
        {"id": "r", "type": "file_operations", "operation": "read", "path": "summary.txt", "depends_on": ["w"]},
        {"id": "x", "type": "file_operations", "operation": "write", "path": "../../etc/passwd", "content": "x"})))
    ctx = dag.Context(str(uuid.uuid4()), {"s": "two domains"}, tmp_path / "wf", [], "fast")
    assert asyncio.run(dag.execute(parsed.step("w"), ctx)) == {"path": "summary.txt", "bytes": 20}
    assert asyncio.run(dag.execute(parsed.step("r"), ctx)) == "Summary: two domains"
    with pytest.raises(StepFailed, match="climbs out"):
        asyncio.run(dag.execute(parsed.step("x"), ctx))
