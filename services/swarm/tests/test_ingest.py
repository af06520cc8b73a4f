"""The ingestion playbook: the leader's first tasks, evidence text, and the follow-ups a finding earns.

Pure functions: no collectors run here. `follow_ups` reads only the investigation's scope, so the
tests hand it a small holder of a real `Scope` built from a real target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pytest

from services.swarm.agents import Investigation
from services.swarm.ingest import Task, follow_ups, initial_tasks, observation_text, url_task
from services.swarm.scope import Scope
from services.swarm.targets import infer_target

BTC = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"  # the genesis block's address (valid checksum)
BTC_2 = "1BoatSLRHtKNngkdXEeobR76b53LETtpyT"
ETH = "0xde0b295669a9fd93d5f28d9ec85e40f4cb697bae"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass
class ScopeHolder:
    """What follow_ups reads of an investigation: its (mutable) scope."""

    scope: Scope


def investigation(target: str, *allow: str) -> ScopeHolder:
    return ScopeHolder(Scope.build(infer_target(target), list(allow)))


def run_follow_ups(task: Task, found: list[tuple[str, str]], holder: ScopeHolder, max_depth: int = 3) -> list[Task]:
    observations = [{"entity": {"id": f"{kind}--{n}", "type": kind, "value": value, "properties": {}},
                     "relations": [], "collector": task.collector or "graph", "source": task.target}
                    for n, (kind, value) in enumerate(found)]
    return follow_ups(task, observations, cast(Investigation, holder), max_depth)


def page(url: str, depth: int = 0) -> Task:
    return Task("collect", "url", url, depth, "web", "test page")


# --- the leader's plan --------------------------------------------------------------------------


def test_domain_target_plan() -> None:
    tasks = initial_tasks("domain-name", "example.com", ["https://blog.example.com/post"])
    assert [(t.kind, t.target_type, t.target, t.collector, t.depth) for t in tasks] == [
        ("collect", "domain-name", "example.com", "dns", 0),
        ("collect", "domain-name", "example.com", "whois", 0),
        ("collect", "url", "http://example.com/", "web", 0),
        ("collect", "url", "https://example.com/", "web", 0),
        ("neighborhood", "domain-name", "example.com", "", 0),
        ("collect", "url", "https://blog.example.com/post", "web", 0),
    ]
    assert all(t.reason for t in tasks)


def test_url_target_plan_fetches_the_page_and_resolves_its_host() -> None:
    tasks = initial_tasks("url", "https://login.example.com/update?id=7", [])
    assert [(t.kind, t.target_type, t.target, t.collector) for t in tasks] == [
        ("collect", "url", "https://login.example.com/update?id=7", "web"),
        ("collect", "domain-name", "login.example.com", "dns"),
        ("neighborhood", "url", "https://login.example.com/update?id=7", ""),
    ]


@pytest.mark.parametrize(("wallet", "collector"), [(BTC, "bitcoin"), (ETH, "ethereum"), ("0X" + ETH[2:].upper(), "ethereum")])
def test_wallet_target_is_traced_on_its_chain(wallet: str, collector: str) -> None:
    tasks = initial_tasks("x-crypto-address", wallet, [])
    assert [(t.kind, t.target, t.collector) for t in tasks] == [
        ("collect", wallet, collector), ("neighborhood", wallet, "")]
    assert tasks[0].target_type == "x-crypto-address"


def test_hash_target_is_analysed_if_held_then_a_graph_lookup_and_seeds_become_page_fetches() -> None:
    seeds = ["https://a.example.net/report", "http://b.example.org/"]
    tasks = initial_tasks("file", SHA256, seeds)
    assert tasks[0] == Task("collect", "file", SHA256, 0, "malware", reason=tasks[0].reason)
    assert tasks[1] == Task("neighborhood", "file", SHA256, 0, reason=tasks[1].reason)
    assert [(t.kind, t.target_type, t.target, t.collector, t.depth) for t in tasks[2:]] == [
        ("collect", "url", seed, "web", 0) for seed in seeds]


@pytest.mark.parametrize(("url", "task"), [
    ("https://cdn.example.net/download/Update.EXE", ("url", "https://cdn.example.net/download/Update.EXE", "malware")),
    ("https://cdn.example.net/invoice.docm?dl=1", ("url", "https://cdn.example.net/invoice.docm?dl=1", "malware")),
    ("https://shop.example.com/img/desk.jpg", ("url", "https://shop.example.com/img/desk.jpg", "geo")),
    ("https://social.example.net/@lure", ("user-account", "@lure@social.example.net", "social")),
    ("https://bsky.app/profile/lure.bsky.social", ("user-account", "@lure.bsky.social", "social")),
    ("https://shop.example.com/about/", ("url", "https://shop.example.com/about/", "web")),
    ("https://shop.example.com/exe/", ("url", "https://shop.example.com/exe/", "web")),  # a suffix, not a word
])
def test_a_url_goes_to_the_analyzer_its_path_calls_for(url: str, task: tuple[str, str, str]) -> None:
    found = url_task(url, 2, "linked")
    assert (found.target_type, found.target, found.collector, found.depth) == (*task, 2)


@pytest.mark.parametrize(("stix_type", "value", "collector"), [
    ("ipv4-addr", "8.8.8.8", "geo"), ("ipv6-addr", "2001:4860:4860::8888", "geo"),
    ("user-account", "@lure@social.example.net", "social"), ("user-account", "@lure.bsky.social", "social")])
def test_address_and_account_targets_start_with_their_analyzer(stix_type: str, value: str, collector: str) -> None:
    tasks = initial_tasks(stix_type, value, [])
    assert [(t.kind, t.target_type, t.target, t.collector) for t in tasks] == [
        ("collect", stix_type, value, collector), ("neighborhood", stix_type, value, "")]


def test_task_key_and_round_trip() -> None:
    task = Task("collect", "url", "https://example.com/", 2, "web", "linked")
    assert task.key == ("collect", "web", "https://example.com/")
    assert Task.from_dict(task.to_dict()) == task
    # The reason and depth are not part of the key: the same pivot found twice is one task.
    assert Task("collect", "url", "https://example.com/", 0, "web", "other").key == task.key


# --- evidence text ------------------------------------------------------------------------------


def test_observation_text_names_relation_ends_by_value() -> None:
    obs: Mapping[str, Any] = {
        "collector": "web", "source": "https://example.com/",
        "entity": {"id": "url--1", "type": "url", "value": "https://example.com/",
                   "properties": {"title": "Browser update", "name": 42, "description": "x" * 600}},
        "relations": [
            {"source_id": "url--1", "target_id": "domain-name--2", "type": "links-to", "confidence": 80},
            {"source_id": "url--1", "target_id": "x-crypto-address--9", "type": "related-to", "confidence": 50},
        ],
    }
    names = {"url--1": "https://example.com/", "domain-name--2": "pay.example.com"}
    assert observation_text(obs, names).splitlines() == [
        "web observed url https://example.com/ at https://example.com/",
        "https://example.com/ links-to pay.example.com",
        "https://example.com/ related-to x-crypto-address--9",  # unknown id: shown as the id
        "title: Browser update",  # a non-string name is left out
        "description: " + "x" * 500,  # long text is cut at 500 characters
    ]


def test_observation_text_without_relations_or_properties() -> None:
    obs = {"collector": "dns", "source": "dns:example.com", "relations": [],
           "entity": {"id": "ipv4-addr--1", "type": "ipv4-addr", "value": "93.184.216.34"}}
    assert observation_text(obs, {}) == "dns observed ipv4-addr 93.184.216.34 at dns:example.com"


# --- follow-ups -------------------------------------------------------------------------------


def test_in_scope_page_widens_to_the_exact_host_it_names() -> None:
    inv = investigation("example.com")
    tasks = run_follow_ups(page("https://example.com/"), [("url", "https://cdn.other-site.net/lib.js")], inv)
    assert tasks == [Task("collect", "url", "https://cdn.other-site.net/lib.js", 1, "web",
                          "linked from https://example.com/")]
    assert set(inv.scope.hosts) == {"cdn.other-site.net"}
    assert "https://example.com/" in inv.scope.hosts["cdn.other-site.net"]
    # That host only: not its parent, not a sibling, not a subdomain.
    assert inv.scope.allows_host("cdn.other-site.net")
    assert not inv.scope.allows_host("other-site.net")
    assert not inv.scope.allows_host("www.other-site.net")
    assert not inv.scope.allows_host("a.cdn.other-site.net")


def test_in_scope_page_naming_a_domain_schedules_dns_and_whois() -> None:
    inv = investigation("example.com")
    tasks = run_follow_ups(page("https://example.com/contact"), [("domain-name", "mail.partner.org")], inv)
    assert [(t.kind, t.target_type, t.target, t.collector, t.depth) for t in tasks] == [
        ("collect", "domain-name", "mail.partner.org", "dns", 1),
        ("collect", "domain-name", "mail.partner.org", "whois", 1),
    ]
    assert set(inv.scope.hosts) == {"mail.partner.org"}


def test_page_outside_the_scope_does_not_widen_it() -> None:
    inv = investigation("example.com")
    tasks = run_follow_ups(page("https://elsewhere.net/"),
                           [("url", "https://third.org/x"), ("domain-name", "fourth.org"),
                            ("url", "https://www.example.com/from-outside")], inv)
    assert inv.scope.hosts == {}
    # What it names inside the scope is still fetched; what it names outside is not.
    assert [(t.target, t.collector) for t in tasks] == [("https://www.example.com/from-outside", "web")]


def test_findings_of_other_collectors_do_not_widen_the_scope() -> None:
    inv = investigation("example.com")
    dns = Task("collect", "domain-name", "example.com", 0, "dns")
    tasks = run_follow_ups(dns, [("domain-name", "ns1.hoster.net"), ("domain-name", "ns2.example.com")], inv)
    assert inv.scope.hosts == {}
    # In-scope names get a DNS lookup (no WHOIS: only names a page mentions get one).
    assert [(t.target, t.collector) for t in tasks] == [("ns2.example.com", "dns")]


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://127.0.0.1:8080/admin",
    "http://10.0.0.5/",
])
def test_ip_literal_urls_named_by_an_in_scope_page_are_never_fetched(url: str) -> None:
    inv = investigation("example.com")
    assert run_follow_ups(page("https://example.com/"), [("url", url)], inv) == []
    assert inv.scope.hosts == {}


def test_special_use_names_on_an_in_scope_page_are_not_widened_to() -> None:
    inv = investigation("example.com")
    found = [("url", "http://metadata.google.internal/computeMetadata/v1/"), ("domain-name", "printer.local"),
             ("url", "http://localhost/")]
    assert run_follow_ups(page("https://example.com/"), found, inv) == []
    assert inv.scope.hosts == {}


@pytest.mark.parametrize("url", ["javascript:fetch('https://evil.net/')", "ftp://files.example.com/payload.exe",
                                 "file:///etc/passwd", "data:text/html,<script>1</script>"])
def test_non_http_urls_are_not_fetched(url: str) -> None:
    inv = investigation("example.com")
    assert run_follow_ups(page("https://example.com/"), [("url", url)], inv) == []
    assert inv.scope.hosts == {}


def test_userinfo_url_is_not_fetched() -> None:
    inv = investigation("example.com")
    tasks = run_follow_ups(page("https://example.com/"), [("url", "http://example.com@169.254.169.254/")], inv)
    assert tasks == []


def test_depth_beyond_max_depth_yields_nothing() -> None:
    inv = investigation("example.com")
    found = [("url", "https://example.com/next"), ("x-crypto-address", BTC), ("file", SHA256)]
    assert run_follow_ups(page("https://example.com/", depth=2), found, inv, max_depth=2) == []
    assert inv.scope.hosts == {}
    last = run_follow_ups(page("https://example.com/", depth=1), found, inv, max_depth=2)
    assert {t.depth for t in last} == {2}
    assert [t.target for t in last] == ["https://example.com/next", BTC, SHA256]


def test_the_page_itself_is_not_a_follow_up() -> None:
    inv = investigation("example.com")
    assert run_follow_ups(page("https://example.com/"), [("url", "https://example.com/")], inv) == []


def test_wallets_on_a_page_are_traced_on_their_chain() -> None:
    inv = investigation("example.com")
    tasks = run_follow_ups(page("https://example.com/donate"), [("x-crypto-address", BTC),
                                                                ("x-crypto-address", ETH)], inv)
    assert [(t.kind, t.target_type, t.target, t.collector, t.depth) for t in tasks] == [
        ("collect", "x-crypto-address", BTC, "bitcoin", 1),
        ("collect", "x-crypto-address", ETH, "ethereum", 1),
    ]


@pytest.mark.parametrize("collector", ["bitcoin", "ethereum"])
def test_wallets_found_by_a_trace_are_not_traced_again(collector: str) -> None:
    inv = ScopeHolder(Scope.build(infer_target(BTC), []))
    trace = Task("collect", "x-crypto-address", BTC, 0, collector)
    assert run_follow_ups(trace, [("x-crypto-address", BTC_2), ("x-crypto-address", ETH)], inv) == []


def test_wallets_the_graph_holds_are_traced() -> None:
    inv = investigation("example.com")
    lookup = Task("neighborhood", "domain-name", "example.com", 0)
    tasks = run_follow_ups(lookup, [("x-crypto-address", BTC_2)], inv)
    assert [(t.target, t.collector, t.depth) for t in tasks] == [(BTC_2, "bitcoin", 1)]


def test_indicators_on_a_page_get_a_graph_lookup() -> None:
    inv = investigation("example.com")
    found = [("file", SHA256), ("ipv4-addr", "203.0.113.7"), ("malware", "PaleLoader"), ("email-addr", "a@b.org")]
    tasks = run_follow_ups(page("https://example.com/"), found, inv)
    assert [(t.kind, t.target_type, t.target, t.depth) for t in tasks] == [
        ("neighborhood", "file", SHA256, 1),
        ("neighborhood", "ipv4-addr", "203.0.113.7", 1),
        ("neighborhood", "malware", "PaleLoader", 1),
    ]
    # The same indicators found by the graph itself get no second lookup.
    again = run_follow_ups(Task("neighborhood", "domain-name", "example.com", 0), found, inv)
    assert again == []


def test_an_in_scope_page_sends_its_sample_photo_and_profile_to_the_analyzers() -> None:
    inv = investigation("example.com")
    found = [("url", "https://example.com/dl/Setup.exe"), ("url", "https://example.com/team.jpg"),
             ("url", "https://social.example.net/@lure"), ("url", "https://out-of-scope.org/x.exe")]
    tasks = run_follow_ups(page("https://example.com/"), found, inv)
    assert [(t.target_type, t.target, t.collector) for t in tasks] == [
        ("url", "https://example.com/dl/Setup.exe", "malware"),
        ("url", "https://example.com/team.jpg", "geo"),
        ("user-account", "@lure@social.example.net", "social"),  # its instance was named by the page: widened
        ("url", "https://out-of-scope.org/x.exe", "malware"),  # widened likewise; the collectors' guard still applies
    ]
    assert inv.scope.check("collectors.Collect", {"target_type": "user-account", "target": "@lure@social.example.net"}) is None


def test_an_out_of_scope_instance_is_refused_and_bluesky_has_no_destination() -> None:
    inv = investigation("example.com")
    refusal = inv.scope.check("collectors.Collect", {"target_type": "user-account", "target": "@x@elsewhere.net"})
    assert refusal is not None and "elsewhere.net" in refusal
    assert inv.scope.check("collectors.Collect", {"target_type": "user-account", "target": "@x.bsky.social"}) is None


def test_routable_addresses_the_target_resolves_to_are_located() -> None:
    inv = investigation("example.com")
    dns = Task("collect", "domain-name", "example.com", 0, "dns")
    observations = [{"entity": {"id": f"ipv4-addr--{n}", "type": "ipv4-addr", "value": ip, "properties": {}},
                     "relations": [{"type": "resolves-to", "source_id": "d", "target_id": f"ipv4-addr--{n}"}],
                     "collector": "dns", "source": "dns"} for n, ip in enumerate(["93.184.215.14", "10.0.0.7"])]
    tasks = follow_ups(dns, observations, cast(Investigation, inv), 3)
    # The private address is never collected on (DNS rebinding); the public one is located by GeoIP.
    assert [(t.target_type, t.target, t.collector) for t in tasks] == [("ipv4-addr", "93.184.215.14", "geo")]
    assert inv.scope.check("collectors.Collect", {"target_type": "ipv4-addr", "target": "93.184.215.14"}) is None
