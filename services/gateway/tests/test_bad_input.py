"""No input yields a 5xx: the gateway over real HTTP in front of real services (avatar, collectors on
FalkorDB and PostgreSQL, embeddings with MiniLM on PostgreSQL, reasoning on llama.cpp), fed what
Schemathesis and analysts found: integers past 2^31, lone surrogates, NaN, Infinity and 1e309, NUL
in bodies, query strings, paths and form fields, loosely typed OpenAI requests. Each is a 4xx that
says what and where, in the API's error shape (OpenAI's under /v1/); valid requests still pass."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio

from bev.engines import FalkorDB, NatsServer, Postgres, Redis
from bev.rpc import InstanceInfo
from bev.testing.serving import serving_on_nats
from services.avatar.servicer import assemble as assemble_avatar
from services.avatar.settings import AvatarConfig
from services.collectors.servicer import assemble as assemble_collectors
from services.collectors.settings import CollectorsConfig, FetchConfig, GraphConfig
from services.collectors.testing import DnsFixture
from services.embeddings.model import SentenceEmbedder
from services.embeddings.registry import ModelRegistry
from services.embeddings.servicer import EmbeddingsDeps
from services.embeddings.servicer import assemble as assemble_embeddings
from services.embeddings.settings import EmbeddingsConfig
from services.gateway.testing import gateway_on_free_port
from services.reasoning.testing import ReasoningOnNats

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT = {"model": "fast", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
# Every route with a JSON body, with a valid body, and what that body gets.
BODIES: dict[str, tuple[dict[str, Any], int]] = {
    "/api/v1/avatar/speak": ({"text": "ok", "personality": "mentor"}, 200),
    "/api/v1/indicators/extract": ({"text": "beacon to 203.0.113.9, CVE-2024-3094"}, 200),
    "/api/v1/graph/query": ({"cypher": "RETURN $x AS x", "params": {"x": {"k": [1, 2.5, None]}}, "limit": 1000}, 200),
    "/api/v1/graph/export": ({"entity_ids": ["url--00000000-0000-4000-8000-000000000000"], "depth": 3}, 404),
    "/api/v1/collectors/dns/collect": ({"target_type": "domain-name", "target": "bad-input.example.test", "tlp": "green"}, 200),
    "/api/v1/embeddings/embed": ({"texts": ["phishing kit"]}, 200),
    "/v1/embeddings": ({"input": ["phishing kit"], "encoding_format": "float"}, 200),
    "/api/v1/reasoning/generate": ({"prompt": "Say hi.", "max_tokens": 4, "temperature": 0.0, "tier": "Fast"}, 200),
    "/api/v1/reasoning/analyze": ({"question": "Who?", "documents": [{"text": "Nothing to see here."}],
                                   "max_hypotheses": 1}, 200),
    "/v1/chat/completions": (CHAT, 200),
}


def raw(document: Any) -> bytes:
    """JSON as a client may send it: lone surrogates escaped, NaN and Infinity written out."""
    return json.dumps(document, ensure_ascii=True, allow_nan=True).encode()


async def post(http: httpx.AsyncClient, path: str, body: bytes | Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else raw(body)
    return await http.post(path, content=content, headers={"content-type": "application/json"})


def first_string(document: Any, replace: Callable[[str], str]) -> Any:
    """`document` with its first string value (depth first) replaced."""
    document = copy.deepcopy(document)
    stack: list[Any] = [document]
    while stack:
        node = stack.pop(0)
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        for key, value in items:
            if isinstance(value, str):
                node[key] = replace(value)
                return document
            stack.append(value)
    raise AssertionError("no string in the body")


def refused(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """The response is `status` with an error message containing `words`, in the route's shape."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    if response.request.url.path.startswith("/v1/"):
        error = body["error"]
        assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}
        message = error["message"]
    else:
        assert body["code"] == "INVALID_ARGUMENT", body
        message = body["error"]
    for word in words:
        assert word in message, message
    return body


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    nats_server: NatsServer, postgres_server: Postgres, falkordb_server: FalkorDB, dns_fixture: DnsFixture,
    fresh_database: Callable[[], str], minilm: SentenceEmbedder, reasoning_on_nats: ReasoningOnNats,
    redis_server: Redis, tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with avatar, collectors, embeddings and reasoning behind it, on the session's bus,
    called with its admin key."""
    dns_fixture.add("bad-input.example.test", "A", "192.0.2.10")
    collectors = await assemble_collectors(
        InstanceInfo(service="collectors"),
        CollectorsConfig(fetch=FetchConfig(allow_ranges=["127.0.0.0/8"], nameservers=[dns_fixture.nameserver],
                                           tor_socks_url=""),
                         graph=GraphConfig(name=f"bad-input-{uuid.uuid4().hex[:8]}")),
        {"postgres": {"dsn": postgres_server.dsn},
         "falkordb": {"host": falkordb_server.host, "port": str(falkordb_server.port),
                      "password": falkordb_server.password}}.__getitem__)
    config = EmbeddingsConfig()
    embeddings = await assemble_embeddings(
        InstanceInfo(service="embeddings"), config,
        EmbeddingsDeps(fresh_database(), tmp_path_factory.mktemp("bad-input"),
                       ModelRegistry([ModelRegistry.serve(minilm, config)], config.model)))
    avatar_nc = await nats.connect(nats_server.url)  # the avatar's own, as its process has
    avatar = await assemble_avatar(InstanceInfo(service="avatar"), AvatarConfig(), avatar_nc)
    try:
        async with serving_on_nats(avatar, nats_server.url), \
                serving_on_nats(collectors, nats_server.url), serving_on_nats(embeddings, nats_server.url) as nc, \
                gateway_on_free_port(nc, fresh_database(), redis_server.url) as gateway, \
                httpx.AsyncClient(base_url=gateway.url, headers=gateway.auth(), timeout=120, trust_env=False) as http:
            yield http
    finally:
        await avatar_nc.close()
    await collectors.collection.graph.delete_graph()  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", BODIES)
async def test_every_json_route_still_takes_its_valid_body(gateway: httpx.AsyncClient, path: str) -> None:
    body, status = BODIES[path]
    response = await post(gateway, path, body)
    assert response.status_code == status, response.text


@pytest.mark.parametrize("path", BODIES)
async def test_a_lone_surrogate_anywhere_in_json_is_400(gateway: httpx.AsyncClient, path: str) -> None:
    body, _ = BODIES[path]
    in_value = await post(gateway, path, first_string(body, lambda text: text + "\ud800"))
    refused(in_value, 400, "lone surrogate", "\\ud800", "$.")
    in_key = await post(gateway, path, {**body, "note\udfff": 1})
    refused(in_key, 400, "lone surrogate", "a key in $")


async def test_a_surrogate_pair_is_a_character(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/api/v1/indicators/extract", content=b'{"text": "\\ud83d\\ude00 203.0.113.9"}',
                                  headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert ("ipv4", "203.0.113.9") in {(i["type"], i["value"]) for i in response.json()["indicators"]}


@pytest.mark.parametrize("path", BODIES)
async def test_nul_in_a_json_string_is_400(gateway: httpx.AsyncClient, path: str) -> None:
    body, _ = BODIES[path]
    refused(await post(gateway, path, first_string(body, lambda text: text + "\x00")), 400, "NUL", "$.")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"])
@pytest.mark.parametrize(("path", "template"), [
    ("/api/v1/avatar/speak", '{"text": %s}'),  # where a string goes: refused as a number, not as a type
    ("/api/v1/reasoning/generate", '{"prompt": "hi", "temperature": %s}'),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "top_p": %s}'),
    ("/api/v1/graph/query", '{"cypher": "RETURN $x", "params": {"x": [%s]}}'),  # free-form JSON too
    ("/api/v1/indicators/extract", '{"text": "x", "ignored": %s}'),  # and fields no model reads
])
async def test_non_finite_numbers_are_400(gateway: httpx.AsyncClient, path: str, template: str, number: str) -> None:
    response = await post(gateway, path, (template % number).encode())
    refused(response, 400, "NaN" if number == "NaN" else "Infinity" if "Infinity" in number else "out of range")


async def test_integers_are_bounded_by_their_proto_fields(gateway: httpx.AsyncClient) -> None:
    for limit in (2**31, 2**31 - 1, 2**63, 2**64, 10**30, -1):
        response = await post(gateway, "/api/v1/graph/query", {"cypher": "RETURN 1", "limit": limit})
        refused(response, 422, "limit", "1000" if limit > 0 else "0")
    for depth in (4, 2**31, 2**44 + 1):
        refused(await post(gateway, "/api/v1/graph/export", {"entity_ids": ["url--x"], "depth": depth}), 422, "depth")
        neighborhood = await gateway.get("/api/v1/graph/neighborhood", params={"entity_id": "url--x", "depth": depth})
        refused(neighborhood, 422, "depth (query parameter)", "less than or equal to 3")
    huge = await gateway.get("/api/v1/graph/neighborhood", params={"entity_id": "url--x", "limit": 2**70})
    refused(huge, 422, "limit (query parameter)")
    bounds = await gateway.get("/api/v1/graph/neighborhood", params={"entity_id": "url--x", "depth": 3, "limit": 1000})
    assert bounds.status_code == 404, bounds.text  # within bounds: the service's answer (no such entity)
    refused(await post(gateway, "/api/v1/reasoning/generate", {"prompt": "hi", "max_tokens": 4097}), 422, "max_tokens")
    refused(await post(gateway, "/api/v1/reasoning/analyze", {"question": "q", "documents": [{"text": "t"}],
                                                               "max_hypotheses": 2**31}), 422, "max_hypotheses")
    refused(await post(gateway, "/api/v1/collectors/dns/collect",
                       {"target_type": "domain-name", "target": "bad-input.example.test", "confidence": 2**40}), 422, "confidence")
    refused(await gateway.get("/api/v1/search", params={"q": "x", "k": 2**33}), 422, "k (query parameter)")
    refused(await post(gateway, "/v1/embeddings", {"input": "x", "dimensions": 2**33}), 400, "dimensions")
    refused(await post(gateway, "/api/v1/graph/query", {"cypher": "RETURN 1", "limit": "10"}), 422, "valid integer")
    refused(await post(gateway, "/api/v1/graph/query", {"cypher": "RETURN 1", "limit": True}), 422, "valid integer")
    refused(await post(gateway, "/api/v1/graph/query", {"cypher": "RETURN 1", "limit": 10.5}), 422, "valid integer")
    whole = await post(gateway, "/api/v1/graph/query", {"cypher": "RETURN 1", "limit": 10.0})  # JSON's 10.0 is 10
    assert whole.status_code == 200, whole.text
    digits = await post(gateway, "/api/v1/graph/query", b'{"cypher": "RETURN 1", "limit": 1' + b"0" * 5000 + b"}")
    refused(digits, 400, "too many digits")


async def test_nul_in_query_path_and_form_fields_is_400_not_the_databases_error(gateway: httpx.AsyncClient) -> None:
    search = await gateway.get("/api/v1/search", params={"q": "ransom\x00ware"})
    body = refused(search, 400, "the query parameter 'q'", "NUL")
    assert "PostgreSQL" not in body["error"]
    refused(await gateway.get("/api/v1/search", params={"q": "x", "source": ["ok", "bad\x00"]}), 400, "'source'", "NUL")
    refused(await gateway.get("/api/v1/search", params={"q": "x", "bad\x00name": "1"}), 400, "query parameter name")
    refused(await gateway.get("/api/v1/documents/doc%00id"), 400, "the path", "NUL")
    refused(await gateway.get("/api/v1/graph/entities/url--a%00b"), 400, "the path", "NUL")
    upload = await gateway.post("/api/v1/documents", files={"file": ("notes.txt", b"Brass Typhoon notes", "text/plain")},
                                data={"title": "Brass\x00Typhoon", "tlp": "green"})
    refused(upload, 400, "the form field 'title'", "NUL")
    named = await gateway.post(  # a raw NUL in the file name (httpx would percent-encode it)
        "/api/v1/documents", headers={"content-type": "multipart/form-data; boundary=b0undary"},
        content=b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="no\x00tes.txt"\r\n'
                b"Content-Type: text/plain\r\n\r\nBrass Typhoon\r\n--b0undary--\r\n")
    refused(named, 400, "the form field 'file'", "NUL")
    fine = await gateway.post("/api/v1/documents", files={"file": ("notes.txt", b"Brass Typhoon notes", "text/plain")},
                              data={"title": "Brass Typhoon", "tlp": "green"})
    assert fine.status_code == 202, fine.text
    found = await gateway.get("/api/v1/search", params={"q": "ransomware", "k": 100, "tlp": ["green", "TLP:AMBER"]})
    assert found.status_code == 200, found.text


async def test_list_routes_take_only_their_own_cursors(gateway: httpx.AsyncClient) -> None:
    whole = (await gateway.get("/api/v1/collectors")).json()
    names = [c["name"] for c in whole["collectors"]]
    assert whole["next_cursor"] == "" and names == sorted(names) and len(names) > 2
    seen: list[str] = []
    cursor = ""
    while True:  # the gateway pages the service's list: by name, `next_cursor` "" on the last page
        page = (await gateway.get("/api/v1/collectors", params={"limit": 2, "cursor": cursor})).json()
        seen += [c["name"] for c in page["collectors"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == names
    # A cursor is a position (hex of an item's sort key): anything else is refused by the schema.
    refused(await gateway.get("/api/v1/collectors", params={"cursor": "%%"}), 422, "cursor (query parameter)")
    refused(await gateway.get("/api/v1/collectors", params={"cursor": "\u00e9t\u00e9"}), 422, "cursor (query parameter)")
    refused(await gateway.get("/api/v1/collectors", params={"cursor": "abc"}), 422, "cursor (query parameter)")
    # Any hex is a position: after a key past every name, the page is empty.
    past = (await gateway.get("/api/v1/collectors", params={"cursor": b"zzzz".hex()})).json()
    assert past == {"collectors": [], "next_cursor": ""}
    refused(await gateway.get("/api/v1/collectors", params={"limit": 0}), 422, "limit (query parameter)")
    refused(await gateway.get("/api/v1/collectors", params={"limit": 501}), 422, "limit (query parameter)")


async def test_a_key_collects_only_at_a_tlp_it_may_read(gateway: httpx.AsyncClient) -> None:
    made = await gateway.post("/api/v1/keys", json={"name": "green analyst", "scopes": ["write"], "team": "bad-input",
                                                    "max_tlp": "green"})
    assert made.status_code == 201, made.text
    headers = {"Authorization": f"Bearer {made.json()['key']}"}
    target = {"target_type": "domain-name", "target": "bad-input.example.test"}
    above = await gateway.post("/api/v1/collectors/dns/collect", json={**target, "tlp": "amber"}, headers=headers)
    assert above.status_code == 403 and above.json() == {
        "error": "this key reads at most TLP:GREEN; it cannot collect at TLP:AMBER", "code": "PERMISSION_DENIED"}
    within = await gateway.post("/api/v1/collectors/dns/collect", json={**target, "tlp": "green"}, headers=headers)
    assert within.status_code == 200 and within.json()["observations"], within.text


async def test_dates_out_of_range_are_400(gateway: httpx.AsyncClient) -> None:
    for when in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00"):
        refused(await gateway.get("/api/v1/search", params={"q": "x", "after": when}), 400, "out of range")


async def test_graph_parameters_are_what_the_graph_takes(gateway: httpx.AsyncClient) -> None:
    for params in ({"": 1}, {"x": {"": 1}}, {"x": [{"a`b": 1}]}, {"1x": 1}):
        refused(await post(gateway, "/api/v1/graph/query", {"cypher": "RETURN 1", "params": params}), 422, "params")
    refused(await post(gateway, "/api/v1/graph/query", {"cypher": "   "}), 422, "cypher")


@pytest.mark.parametrize(("change", "param"), [
    ({"stream": 0}, "stream"),
    ({"stream": "true"}, "stream"),
    ({"temperature": False}, "temperature"),
    ({"temperature": "0.5"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 4097}, "max_tokens"),
    ({"max_tokens": "4"}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"n": 2}, "n"),
    ({"n": True}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": "Say hi."}, "messages"),
    ({"messages": ["Say hi."]}, "messages[0]"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"user": 7}, "user"),
    ({"model": None}, "model"),
])
async def test_chat_completions_are_validated_as_openai_does(
    gateway: httpx.AsyncClient, change: dict[str, Any], param: str,
) -> None:
    response = await post(gateway, "/v1/chat/completions", {**CHAT, **change})
    error = refused(response, 400, f"'{param}'")["error"]
    assert error["param"] == param
    assert error["code"] in ("invalid_type", "invalid_value", "missing_required_parameter")


async def test_chat_completions_take_what_openai_takes(gateway: httpx.AsyncClient) -> None:
    for change in ({"stream": None, "temperature": None, "n": None, "top_p": None, "max_tokens": None,
                    "max_completion_tokens": 4, "user": None, "stop": None, "tools": None, "response_format": None},
                   {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                                 {"role": "user", "content": "Say hi.", "name": "analyst"}]},
                   {"temperature": 2, "top_p": 1, "n": 1, "stop": "\n", "response_format": {"type": "text"},
                    "frequency_penalty": 0, "seed": 7}):  # fields this endpoint does not use are ignored
        response = await post(gateway, "/v1/chat/completions", {**CHAT, **change})
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "chat.completion"
    streamed = await post(gateway, "/v1/chat/completions", {**CHAT, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(("schema", "words"), [
    ({"enum": []}, "enum must list"),  # each of these killed llama.cpp's server, and the fast tier with it
    ({"type": "object", "properties": {"a": {"enum": []}}}, "schema.properties.a: enum"),
    ({"anyOf": []}, "anyOf must be a non-empty list"),
    ({"type": []}, "non-empty list"),
    ({"type": "string", "maxLength": 10000}, "maxLength must be an integer from 0 to 1000"),
    ({"type": "array", "maxItems": 10**9}, "maxItems"),
    ({"type": "string", "pattern": "^a{0,10000}$"}, "repetition"),
    ({"type": "string", "pattern": "^\\d{3}$"}, "[0-9]"),
    ({"type": "string", "pattern": "^\\s$"}, "may escape only"),
    ({"type": "string", "pattern": "^[z-a]$"}, "not a regular expression"),
    ({"type": "string", "pattern": "(("}, "not a regular expression"),
    ({"enum": ['say "hi"']}, "double quote"),
    ({"type": "object", "properties": {'"': {"type": "string"}}}, "double quote"),
    ({"not": {"type": "string"}}, "`not`"),
    ({"$ref": "https://example.com/schema.json"}, "$ref must point inside"),
    ({"type": "boolean", "items": 5}, "schema.items: a schema is an object"),
    ({"properties": [1]}, "schema.properties: must be an object"),
    ({"required": 5, "type": "object"}, None),  # not a list: nothing the decoder reads, taken
    ({"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": {"items": {
        "items": {}}}}}}}}}}}}, "nests deeper"),
])
async def test_response_format_schemas_are_a_bounded_subset(
    gateway: httpx.AsyncClient, schema: dict[str, Any], words: str | None,
) -> None:
    response = await post(gateway, "/v1/chat/completions", {
        **CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "probe", "schema": schema}}})
    if words is None:
        assert response.status_code == 200, response.text
        return
    error = refused(response, 400, words)["error"]
    assert error["param"] == "response_format.json_schema.schema"


async def test_schemas_within_the_subset_reach_the_model(gateway: httpx.AsyncClient) -> None:
    for schema in ({"type": "string", "pattern": "^[0-9]{3}[.][a-z]+\\\\\\t$"},
                   {"type": "object", "properties": {"a b": {"type": "string", "maxLength": 1000},
                                                     "n": {"type": "array", "items": {"type": "integer"}, "maxItems": 1000},
                                                     "c\\d": {"enum": ["x\\y", "\n", 1.5, None]}},
                    "required": ["a b", "n"]}):
        response = await post(gateway, "/v1/chat/completions", {
            **CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "fine", "schema": schema}}})
        assert response.status_code == 200, response.text
    after = await post(gateway, "/v1/chat/completions", CHAT)  # the engine is still there
    assert after.status_code == 200, after.text


async def test_openai_embeddings_are_strict_too(gateway: httpx.AsyncClient) -> None:
    tokens = refused(await post(gateway, "/v1/embeddings", {"input": [1, 2, 3]}), 400, "token-id input")
    assert tokens["error"]["param"] == "input"
    refused(await post(gateway, "/v1/embeddings", {"input": []}), 400, "'input'")
    refused(await post(gateway, "/v1/embeddings", {"input": ["x"] * 2049}), 400, "'input'")
    refused(await post(gateway, "/v1/embeddings", {"input": "x", "encoding_format": "hex"}), 400, "'encoding_format'")
    refused(await post(gateway, "/v1/embeddings", {"input": "x", "dimensions": 128}), 400, "384 dimensions")


async def test_validation_errors_say_where_in_the_apis_shape(gateway: httpx.AsyncClient) -> None:
    response = await post(gateway, "/api/v1/avatar/speak", {"text": "", "personality": 5, "mood": "calm"})
    body = refused(response, 422, "text", "personality: Input should be a valid string", "mood")
    assert {tuple(d["loc"]) for d in body["detail"]} == {("body", "text"), ("body", "personality"),
                                                         ("body", "mood")}
    assert all(set(d) == {"loc", "msg", "type"} for d in body["detail"])
    strict = await post(gateway, "/api/v1/indicators/extract", {"text": "x", "scrub_pii": 0})
    refused(strict, 422, "scrub_pii", "valid boolean")
    not_json = await post(gateway, "/api/v1/indicators/extract", b'{"text": ')
    refused(not_json, 422, "the body is not valid JSON")
    not_utf8 = await post(gateway, "/api/v1/indicators/extract", '{"text": "caf\xe9"}'.encode("latin-1"))
    refused(not_utf8, 400, "not UTF-8")
    deep = await post(gateway, "/api/v1/indicators/extract", b"[" * 100_000 + b"]" * 100_000)
    refused(deep, 400, "nests")


async def test_unknown_paths_and_methods(gateway: httpx.AsyncClient) -> None:
    missing = await gateway.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found", "code": "NOT_FOUND"}
    method = await gateway.request("PATCH", "/api/v1/documents/some-id")
    assert method.status_code == 405 and method.json()["error"] == "Method Not Allowed"
    assert method.headers["allow"] == "DELETE, GET"  # both routes of the path, not only the first
    openai_missing = await gateway.get("/v1/nothing-here")
    assert openai_missing.status_code == 404 and openai_missing.json()["error"]["message"] == "Not Found"


async def test_the_schema_documents_every_status_and_bound(gateway: httpx.AsyncClient) -> None:
    schema = (await gateway.get("/openapi.json")).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"400", "413", "422", "429", "502", "503", "504"} <= statuses, (method, path)
            if "{" in path:
                assert "404" in statuses, (method, path)
            error = operation["responses"]["400"]["content"]["application/json"]["schema"]
            assert error["properties"]["error"]["type"] == ("object" if path.startswith("/v1/") else "string")
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
    components = schema["components"]["schemas"]
    assert components["ChatCompletionBody"]["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 4096
    assert components["GraphQueryBody"]["properties"]["limit"]["maximum"] == 1000
    assert components["SpeakBody"]["properties"]["personality"]["enum"] == ["", "analyst", "mentor", "red-teamer"]
    depth = next(p for p in schema["paths"]["/api/v1/graph/neighborhood"]["get"]["parameters"] if p["name"] == "depth")
    assert depth["schema"]["maximum"] == 3
