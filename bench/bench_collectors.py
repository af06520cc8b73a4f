"""Collectors: indicator extraction speed, its linearity on base64 blobs, graph upserts batched vs one
MERGE per entity, all in one run.

(a) extraction: extract_indicators over a mixed corpus (threat-report prose with defanged IOCs,
    HTML, feed XML, log lines, base64 blobs) in MB/s; the baseline, measured on the same corpus in
    the same run, is one pass of a single IPv4 regex (what "just grep it" costs), so the ratio says
    how many plain regex scans one full extraction is worth.
    The same ratio on the labelled corpora of tests/data/indicators (forms.json and coverage.json
    texts, repeated to ~200 KB), and micro recall/precision on coverage.json's gold labels.
    Target: extract_vs_regex_ratio >= 0.3 (extraction costs at most ~3 plain regex scans).
(b) base64: a 100 KB base64 blob in MIME form (76-column lines, as mail attachments carry it; it
    goes through the candidate scan line by line), and 50 KB and 200 KB ones to show time grows
    linearly (ratio 200 KB / 100 KB ~ 2), best of 3 each; also the same bytes as one unbroken token.
    Target: 100 KB under 0.5 s.
(c) graph: FalkorDB (its own temporary server) upserts of distinct entities through
    GraphStore.upsert (UNWIND batches of 1000) vs GraphStore.upsert_one_by_one (one MERGE round
    trip per entity, the baseline). Targets: >= 10x, and >= 10k entities/s batched.

    .venv/bin/python bench/bench_collectors.py           # ~1 min on 2 shared cores
    .venv/bin/python bench/bench_collectors.py --quick   # ~20 s
The last stdout line is one JSON object; the table goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bev.engines import FalkorDB
from services.collectors.graph import EntityRow, FalkorGraphStore
from services.collectors.indicators import extract_indicators
from services.collectors.observables import Observable

DATA = Path(__file__).resolve().parents[1] / "services" / "collectors" / "tests" / "data"
TARGETS = {"extract_vs_regex_ratio": (">=", 0.3), "base64_100k_s": ("<", 0.5), "graph_batched_ratio": (">=", 10.0), "graph_batched_per_s": (">=", 10_000.0)}
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


def corpus(size: int, rng: random.Random) -> str:
    """A mixed corpus of about `size` characters, built from the recorded fixtures plus variations."""
    pieces = [(DATA / name).read_text() for name in ("threat-blog.html", "feed.rss", "feed.atom", "whois-registrar.txt")]
    out: list[str] = []
    total = 0
    while total < size:
        kind = rng.randrange(4)
        if kind == 0:
            text = rng.choice(pieces)
        elif kind == 1:
            octets = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
            text = (f"{dt.datetime(2026, 10, 1) + dt.timedelta(seconds=rng.randrange(86400))} sshd[{rng.randrange(9999)}]: "
                    f"Failed password for root from {octets} port {rng.randrange(1024, 65535)} ssh2\n") * 20
        elif kind == 2:
            text = (f"Analysts observed host{rng.randrange(999)}[.]bad-{rng.randrange(99)}[.]net contacting "
                    f"hxxps://cdn{rng.randrange(99)}.example-{rng.randrange(99)}[.]org/{rng.randrange(10**6)}.php "
                    f"and dropping {rng.randbytes(32).hex()} (CVE-2026-{rng.randrange(1000, 9999)}). ") * 10
        else:
            text = "attachment: " + base64.b64encode(rng.randbytes(3000)).decode() + "\n"
        out.append(text)
        total += len(text)
    return "".join(out)


def timed(function: Any, *args: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - began, result


def labelled() -> tuple[str, list[tuple[str, set[tuple[str, str]]]]]:
    """The labelled corpora's texts joined (~200 KB, repeated), and coverage.json's texts with their gold."""
    cases = [json.loads((DATA / "indicators" / name).read_text())["cases"] for name in ("forms.json", "coverage.json")]
    texts = "\n".join(case["text"] for group in cases for case in group)
    gold = [(case["text"], {(kind, value) for kind, value in case["gold"]}) for case in cases[1]]
    return "\n".join([texts] * (200_000 // len(texts) + 1)), gold


def best_ratio(text: str, rounds: int = 3) -> tuple[float, float, Any]:
    """Seconds for extraction and for the regex baseline over ``text``, best of ``rounds``, and the result."""
    extract_s = baseline_s = float("inf")
    found: Any = None
    for _ in range(rounds):  # on shared cores the minimum is the measurement, the rest is other load
        seconds, found = timed(extract_indicators, text)
        extract_s = min(extract_s, seconds)
        baseline_s = min(baseline_s, timed(_IPV4.findall, text)[0])
    return extract_s, baseline_s, found


def recall_precision(gold: list[tuple[str, set[tuple[str, str]]]]) -> tuple[float, float]:
    hits = misses = extra = 0
    for text, labels in gold:
        found = {(item.type, item.value) for item in extract_indicators(text)}
        hits, misses, extra = hits + len(labels & found), misses + len(labels - found), extra + len(found - labels)
    return hits / (hits + misses), hits / (hits + extra)


def bench_extraction(size: int, rng: random.Random) -> dict[str, float]:
    text = corpus(size, rng)
    megabytes = len(text.encode()) / 1e6
    extract_s, baseline_s, found = best_ratio(text)
    labelled_text, gold = labelled()
    labelled_extract_s, labelled_baseline_s, _ = best_ratio(labelled_text)
    recall, precision = recall_precision(gold)
    blobs, tokens = {}, {}
    for kb in (50, 100, 200):
        raw = rng.randbytes(kb * 1024 * 3 // 4)
        # MIME-wrapped (76-column lines, as in mail attachments) and a single unbroken token. Best of 3: on shared cores the minimum
        # is the measurement, the rest is other people's load.
        blobs[kb] = min(timed(extract_indicators, base64.encodebytes(raw).decode())[0] for _ in range(3))
        tokens[kb] = min(timed(extract_indicators, base64.b64encode(raw).decode())[0] for _ in range(3))
    return {
        "corpus_mb": round(megabytes, 3), "indicators": len(found),
        "extract_mb_per_s": round(megabytes / extract_s, 3), "regex_baseline_mb_per_s": round(megabytes / baseline_s, 1),
        "extract_vs_regex_ratio": round(baseline_s / extract_s, 4),
        "labelled_corpus_mb": round(len(labelled_text.encode()) / 1e6, 3),
        "labelled_extract_vs_regex_ratio": round(labelled_baseline_s / labelled_extract_s, 4),
        "coverage_recall": round(recall, 4), "coverage_precision": round(precision, 4),
        "base64_50k_s": round(blobs[50], 4), "base64_100k_s": round(blobs[100], 4), "base64_200k_s": round(blobs[200], 4),
        "base64_linearity_200k_over_100k": round(blobs[200] / blobs[100], 2),
        "base64_token_100k_s": round(tokens[100], 4), "base64_token_200k_s": round(tokens[200], 4),
    }


async def bench_graph(batched_n: int, single_n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bev-bench-collectors-") as tmp, FalkorDB(Path(tmp) / "falkordb") as server:
        store = FalkorGraphStore(server.host, server.port, server.password, "bench", batch_size=1000)
        await store.ensure_schema()
        try:
            rows = [EntityRow.of(Observable("domain-name", f"host{i}.bench.example")) for i in range(batched_n)]
            began = time.perf_counter()
            await store.upsert(rows)
            batched_s = time.perf_counter() - began
            again = time.perf_counter()
            await store.upsert(rows)  # every entity exists now: the idempotent re-run
            rerun_s = time.perf_counter() - again
            singles = [EntityRow.of(Observable("ipv4-addr", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"))
                       for i in range(single_n)]
            began = time.perf_counter()
            await store.upsert_one_by_one(singles)
            single_s = time.perf_counter() - began
            nodes, _ = await store.counts()
            assert nodes == batched_n + single_n, f"expected {batched_n + single_n} entities, found {nodes}"
        finally:
            await store.delete_graph()
            await store.close()
    batched_rate, single_rate = batched_n / batched_s, single_n / single_s
    return {"graph_batched_entities": batched_n, "graph_single_entities": single_n,
            "graph_batched_per_s": round(batched_rate), "graph_rerun_per_s": round(batched_n / rerun_s),
            "graph_single_per_s": round(single_rate), "graph_batched_ratio": round(batched_rate / single_rate, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller corpus and graph (~20 s)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"bench": "collectors", "quick": args.quick, "python": platform.python_version()}
    results.update(bench_extraction(300_000 if args.quick else 2_000_000, rng))
    results.update(asyncio.run(bench_graph(10_000 if args.quick else 50_000, 1_000 if args.quick else 3_000)))
    checks = {}
    for key, (op, bound) in TARGETS.items():
        value = results[key]
        checks[key] = value < bound if op == "<" else value >= bound
    results["targets_met"] = checks
    rows = [
        ("extraction, mixed corpus", f"{results['extract_mb_per_s']} MB/s",
         f"regex baseline {results['regex_baseline_mb_per_s']} MB/s (ratio {results['extract_vs_regex_ratio']}; "
         "target >= 0.3)"),
        ("extraction, labelled corpora", f"ratio {results['labelled_extract_vs_regex_ratio']}",
         f"coverage recall {results['coverage_recall']}, precision {results['coverage_precision']}"),
        ("base64 MIME 50/100/200 KB", f"{results['base64_50k_s']}/{results['base64_100k_s']}/{results['base64_200k_s']} s",
         f"200/100 KB = {results['base64_linearity_200k_over_100k']}x; target 100 KB < 0.5 s"),
        ("base64 one token 100/200 KB", f"{results['base64_token_100k_s']}/{results['base64_token_200k_s']} s",
         "one unbroken token"),
        ("graph upsert, UNWIND x1000", f"{results['graph_batched_per_s']}/s",
         f"re-run {results['graph_rerun_per_s']}/s; target >= 10000/s"),
        ("graph upsert, one MERGE each", f"{results['graph_single_per_s']}/s",
         f"batched is {results['graph_batched_ratio']}x; target >= 10x"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'value':<22} vs baseline", file=sys.stderr)
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:<22} {note}", file=sys.stderr)
    print("targets: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in checks.items()), file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
