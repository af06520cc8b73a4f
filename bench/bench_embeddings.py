"""Embeddings service: micro-batching throughput, HNSW recall/QPS, ingest rate, in one run.

Starts its own nats-server and PostgreSQL (pgvector) in a temp dir, and the embeddings servicer
(real MiniLM, real corpus) in a separate process behind NatsRpcServer, so callers and the
service never share an event loop or a GIL.

(a) throughput: --callers concurrent callers, each sending one text per Embed call over NATS,
    vs sentence-transformers encode in this process at batch 32 on the same texts (sentences/s).
    Short alternating rounds (new texts each); the ratio is the median of the per-round
    service / in-process ratios. Target >= 0.85.
(b) ANN: --chunks synthetic 384-d unit vectors with cluster structure (random centres on the
    sphere plus Gaussian noise; not model output, so their size is not bound by encode speed),
    bulk-COPYed into corpus.chunk_embeddings, HNSW built by the service's own index code;
    recall@10 of the service's pgvector search vs an exact scan (index scans off) of the same
    table, and the QPS of both, one query at a time. Target recall >= 0.95 at >= 10x exact QPS.
(c) ingest: --docs synthetic threat-report documents (~1.5 kB, 2-3 chunks each) through
    IngestStream, as documents/s and chunks/s; the baseline is in-process encode of the same
    chunk texts at batch 32 (the ratio shows what extraction, chunking and storage cost).
(d) large upload: one --big-mb MB text document through SubmitIngest (the asynchronous, durable
    path the gateway's upload takes), timed from the submission to the job's completion (polling
    GetIngestJob), in chunks/s; the baseline is in-process encode of the same chunks at the
    service's batch size. Target ratio >= 0.7.

    .venv/bin/python bench/bench_embeddings.py           # ~8-10 min on 2 shared cores (100k chunks, 3 MB)
    .venv/bin/python bench/bench_embeddings.py --quick   # ~1.5 min (20k chunks, 0.25 MB)
The last stdout line is one JSON object; the table goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import urllib.parse
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "all-MiniLM-L6-v2"
TARGETS = {"throughput_ratio": (">=", 0.85), "hnsw_recall_at_10": (">=", 0.95), "hnsw_qps_ratio": (">=", 10.0),
           "big_ingest_ratio": (">=", 0.7)}
ACTORS = ["APT28", "APT29", "Lazarus", "Sandworm", "Volt Typhoon", "FIN7", "Kimsuky", "Turla", "Scattered Spider"]
ACTIONS = ["sent spearphishing emails with ISO attachments to", "exploited an unpatched VPN appliance at",
           "deployed a wiper against", "harvested credentials from", "laundered stolen funds stolen from",
           "abused OAuth consent to read mailboxes at", "planted a supply-chain implant in software used by"]
TARGETS_ORG = ["a regional hospital", "defence ministries", "a cryptocurrency exchange", "energy utilities",
               "a telecom operator", "think-tank researchers", "a retail chain", "municipal governments"]


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU time of a process and all its descendants still running (PostgreSQL's backends)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    total = 0.0
    for pid in tree:
        try:
            total += cpu_seconds(pid)
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
    return total


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{ACTORS[rng.integers(len(ACTORS))]} {ACTIONS[rng.integers(len(ACTIONS))]} "
            f"{TARGETS_ORG[rng.integers(len(TARGETS_ORG))]} in campaign {i}, using host h{rng.integers(10_000)}.example."
            for i in range(n)]


def documents(n: int, seed: int) -> list[str]:
    return [f"Report {i}\n\n" + " ".join(sentences(12, seed * 100_003 + i)) for i in range(n)]


def long_report(size_bytes: int, seed: int) -> str:
    """One long report of about ``size_bytes`` (UTF-8): sections of 8 sentences, no two alike."""
    parts: list[str] = []
    length = 0
    section = 0
    while length < size_bytes:
        part = f"Section {section}\n\n" + " ".join(sentences(8, seed * 1_000_003 + section))
        parts.append(part)
        length += len(part) + 2
        section += 1
    return "\n\n".join(parts)[:size_bytes]


# --------------------------------------------------------------------------------------------
# The service process

def _server_process(nats_url: str, dsn: str, conn: Connection) -> None:
    os.dup2(2, 1)  # nothing the service prints may land on stdout (its last line is JSON)
    asyncio.run(_serve(nats_url, dsn, conn))


async def _serve(nats_url: str, dsn: str, conn: Connection) -> None:
    import nats

    from bev.rpc import InstanceInfo
    from bev.rpc.nats_transport import NatsRpcServer
    from bev.telemetry import ensure_tracer_provider
    from services.embeddings.servicer import EmbeddingsDeps, assemble
    from services.embeddings.settings import EmbeddingsConfig

    ensure_tracer_provider()
    nc = await nats.connect(nats_url)
    servicer = await assemble(InstanceInfo(service="embeddings"), EmbeddingsConfig(),
                              EmbeddingsDeps(dsn, Path(tempfile.mkdtemp(prefix="bev-bench-embeddings-")), nc=nc))
    server = NatsRpcServer(nc, servicer, max_request_bytes=4 * 1024 * 1024, default_timeout_s=60,
                           max_concurrency=256, instance=servicer.info.instance)
    await servicer.start()  # the ingest workers
    await server.start()
    conn.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await server.stop()
    await servicer.close()
    await nc.close()


# --------------------------------------------------------------------------------------------
# (a) throughput and (c) ingest

async def measure_service(
    args: argparse.Namespace, nats_url: str, embedder: Any, pids: list[int], pg_pid: int
) -> dict[str, Any]:
    import nats

    from bev.embeddings.v1 import embeddings_pb2
    from bev.embeddings.v1.embeddings_rpc import EmbeddingsClient

    nc = await nats.connect(nats_url)
    client = EmbeddingsClient.over_nats(nc, timeout_s=120)
    texts = sentences(args.texts_per_round * args.rounds, seed=1)

    async def service_round() -> float:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for text in texts:
            queue.put_nowait(text)

        async def caller() -> None:
            while not queue.empty():
                text = queue.get_nowait()
                await client.Embed(embeddings_pb2.EmbedRequest(texts=[text]))

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(args.callers)))
        return len(texts) / (time.perf_counter() - started)

    def in_process_round() -> float:
        started = time.perf_counter()
        embedder.encode(texts, batch_size=32)
        return len(texts) / (time.perf_counter() - started)

    # Warm both paths (first batches allocate), then alternate short rounds, so that load from
    # other processes on a shared machine falls on both sides alike; each round uses new texts.
    embedder.encode(texts[:64], batch_size=32)
    await asyncio.gather(*(client.Embed(embeddings_pb2.EmbedRequest(texts=[t])) for t in texts[:64]))
    service_rates, local_rates = [], []
    service_cpu = local_cpu = 0.0  # CPU seconds: steadier than wall time on a shared machine
    everyone = [os.getpid(), *pids]  # this process (the callers), the service, nats-server
    all_texts = texts
    for round_no in range(args.rounds):
        texts = all_texts[round_no * args.texts_per_round : (round_no + 1) * args.texts_per_round]
        for side in ("local", "service") if round_no % 2 == 0 else ("service", "local"):
            before = sum(cpu_seconds(pid) for pid in everyone)
            if side == "local":
                local_rates.append(await asyncio.to_thread(in_process_round))
                local_cpu += sum(cpu_seconds(pid) for pid in everyone) - before
            else:
                service_rates.append(await service_round())
                service_cpu += sum(cpu_seconds(pid) for pid in everyone) - before
    log(f"  (a) {args.rounds} rounds: ratios " + " ".join(f"{s / b:.2f}" for s, b in zip(service_rates, local_rates, strict=True)))
    stats = await client.Stats(embeddings_pb2.StatsRequest())
    mean_batch = stats.queues[0].mean_batch_size

    # (c) ingest through IngestStream, in requests of 50 documents.
    docs = documents(args.docs, seed=7)
    request_docs = [embeddings_pb2.DocumentInput(content=d.encode(), filename=f"r{i}.txt", source="bench")
                    for i, d in enumerate(docs)]
    started = time.perf_counter()
    chunks = 0
    for start in range(0, len(request_docs), 50):
        batch = embeddings_pb2.IngestStreamRequest(documents=request_docs[start : start + 50])
        async for event in client.IngestStream(batch):
            if event.error:
                raise RuntimeError(f"ingest failed: {event.error}")
            chunks += event.chunks
    ingest_s = time.perf_counter() - started

    from services.embeddings.chunking import chunk_text
    from services.embeddings.documents import normalise
    from services.embeddings.settings import EmbeddingsConfig

    config = EmbeddingsConfig()
    chunk_texts = [c.text for d in docs for c in chunk_text(normalise(d), config.chunk_chars, config.chunk_overlap)]
    started = time.perf_counter()
    await asyncio.to_thread(embedder.encode, chunk_texts, 32)
    encode_s = time.perf_counter() - started

    # (d) one large upload through SubmitIngest, followed to completion.
    big = long_report(int(args.big_mb * 1_000_000), seed=11)
    log(f"  (d) submitting a {len(big.encode()) / 1e6:.2f} MB document")
    def service_side_cpu() -> list[float]:  # the service, nats-server, PostgreSQL with its backends
        return [cpu_seconds(pid) for pid in pids] + [tree_cpu_seconds(pg_pid)]

    cpu_before = service_side_cpu()
    started = time.perf_counter()
    job = await client.SubmitIngest(embeddings_pb2.SubmitIngestRequest(document=embeddings_pb2.DocumentInput(
        content=big.encode(), filename="big.txt", source="bench-big")))
    accepted_s = time.perf_counter() - started
    ended = {embeddings_pb2.INGEST_JOB_STATUS_COMPLETED, embeddings_pb2.INGEST_JOB_STATUS_FAILED}
    polls = 0
    while job.status not in ended:
        await asyncio.sleep(0.25)
        job = await client.GetIngestJob(embeddings_pb2.GetIngestJobRequest(job_id=job.job_id))
        polls += 1
        if polls % 40 == 0:
            log(f"  (d) {job.chunks_done}/{job.chunks_total} chunks after {time.perf_counter() - started:.0f}s")
    big_s = time.perf_counter() - started
    cpu_parts = [after - before for after, before in zip(service_side_cpu(), cpu_before, strict=True)]
    big_cpu = sum(cpu_parts)
    if job.status != embeddings_pb2.INGEST_JOB_STATUS_COMPLETED:
        raise RuntimeError(f"large ingest failed: {job.error}")
    await nc.close()
    big_chunks = [c.text for c in chunk_text(normalise(big), config.chunk_chars, config.chunk_overlap)]
    if len(big_chunks) != job.chunks_total:
        raise RuntimeError(f"the service made {job.chunks_total} chunks, the bench {len(big_chunks)}")
    log(f"  (d) ingested {job.chunks_total} chunks in {big_s:.1f}s; encoding them in-process")
    started, cpu_before = time.perf_counter(), cpu_seconds(os.getpid())
    await asyncio.to_thread(embedder.encode, big_chunks, config.batch_size)
    big_encode_s = time.perf_counter() - started
    big_encode_cpu = cpu_seconds(os.getpid()) - cpu_before
    return {
        "throughput": {
            "texts_per_round": args.texts_per_round, "rounds": args.rounds, "callers": args.callers,
            "service_per_s": round(float(np.median(service_rates)), 1),
            "in_process_batch32_per_s": round(float(np.median(local_rates)), 1),
            "mean_batch_size": round(mean_batch, 1),
            "ratio": round(float(np.median([s / b for s, b in zip(service_rates, local_rates, strict=True)])), 3),
            "ratios_per_round": [round(s / b, 3) for s, b in zip(service_rates, local_rates, strict=True)],
            "service_texts_per_cpu_s": round(len(all_texts) / service_cpu, 1),
            "in_process_texts_per_cpu_s": round(len(all_texts) / local_cpu, 1),
            "cpu_efficiency_ratio": round(local_cpu / service_cpu, 3),
        },
        "ingest": {
            "documents": len(docs), "chunks": chunks, "seconds": round(ingest_s, 2),
            "documents_per_s": round(len(docs) / ingest_s, 1), "chunks_per_s": round(chunks / ingest_s, 1),
            "in_process_encode_chunks_per_s": round(len(chunk_texts) / encode_s, 1),
            "ratio_vs_encode": round((chunks / ingest_s) / (len(chunk_texts) / encode_s), 3),
        },
        "big_ingest": {
            "bytes": len(big.encode()), "chunks": job.chunks_total, "accepted_s": round(accepted_s, 3),
            "seconds": round(big_s, 1), "chunks_per_s": round(job.chunks_total / big_s, 1),
            "in_process_encode_s": round(big_encode_s, 1), "batch_size": config.batch_size,
            "in_process_encode_chunks_per_s": round(len(big_chunks) / big_encode_s, 1),
            "ratio_vs_encode": round(big_encode_s / big_s, 3),
            # CPU seconds per chunk: service + PostgreSQL + nats-server vs the encoding process alone
            # (steadier than wall time on a shared machine)
            "service_cpu_ms_per_chunk": round(1000 * big_cpu / job.chunks_total, 1),
            "cpu_ms_per_chunk_by_process": {name: round(1000 * cpu / job.chunks_total, 1)
                                            for name, cpu in zip(("service", "nats", "postgres"), cpu_parts, strict=False)},
            "in_process_cpu_ms_per_chunk": round(1000 * big_encode_cpu / len(big_chunks), 1),
            "cpu_efficiency_ratio": round(big_encode_cpu / big_cpu, 3),
        },
    }


# --------------------------------------------------------------------------------------------
# (b) HNSW recall and QPS vs exact scan

def clustered_unit_vectors(n: int, dims: int, clusters: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((clusters, dims)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dims)).astype(np.float32) * (spread / np.sqrt(dims))
    points = centres[rng.integers(0, clusters, n)] + noise
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


async def measure_ann(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg import sql

    from services.embeddings.corpus import open_pool
    from services.embeddings.schema import migrate
    from services.embeddings.vector_index import PgVectorIndex, SearchFilter

    rng = np.random.default_rng(42)
    data = clustered_unit_vectors(args.chunks + args.queries, 384, max(1, args.chunks // 1000), 1.0, rng)
    vectors, probes = data[: args.chunks], data[args.chunks :]
    await asyncio.to_thread(migrate, dsn)
    started = time.perf_counter()
    chunk_ids = [uuid.uuid4() for _ in range(args.chunks)]
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        per_doc = 100
        doc_ids = [uuid.uuid4() for _ in range(0, args.chunks, per_doc)]
        now = dt.datetime.now(dt.UTC)
        with conn.cursor().copy("copy corpus.documents (id, content_hash, title, media_type, collected_at, text) "
                                "from stdin") as copy:
            for i, doc_id in enumerate(doc_ids):
                copy.write_row((doc_id, uuid.uuid4().hex, f"bench {i}", "text/plain", now, "x" * 20))
        with conn.cursor().copy("copy corpus.chunks (id, document_id, seq, start_offset, end_offset, text) "
                                "from stdin") as copy:
            for i, chunk_id in enumerate(chunk_ids):
                copy.write_row((chunk_id, doc_ids[i // per_doc], i % per_doc, 0, 20, "x" * 20))
        with conn.cursor().copy("copy corpus.chunk_embeddings (chunk_id, model, embedding) from stdin "
                                "with (format binary)") as copy:
            copy.set_types(["uuid", "text", "vector"])
            for chunk_id, vector in zip(chunk_ids, vectors, strict=True):
                copy.write_row((chunk_id, MODEL, vector))
        conn.commit()
    load_s = time.perf_counter() - started
    log(f"  (b) loaded {args.chunks} chunks in {load_s:.1f}s; building HNSW")
    with psycopg.connect(dsn, autocommit=True) as conn:  # room to build the graph in memory
        database = sql.Identifier(urllib.parse.urlsplit(dsn).path[1:])
        conn.execute(sql.SQL("alter database {} set maintenance_work_mem = '1GB'").format(database))
    pool = await open_pool(dsn, max_size=2)
    index = PgVectorIndex(pool, ef_search=args.ef_search)
    started = time.perf_counter()
    await index.prepare(MODEL, 384)
    build_s = time.perf_counter() - started
    log(f"  (b) HNSW built in {build_s:.1f}s")

    position = {str(c): i for i, c in enumerate(chunk_ids)}
    k = 10
    exact_sql = ("select e.chunk_id::text from corpus.chunk_embeddings e where e.model = %s "
                 "order by e.embedding::vector(384) <=> %s::vector(384) limit %s")
    exact_results: list[set[int]] = []
    async with pool.connection() as conn:
        await conn.execute("set enable_indexscan = off")  # the baseline: a full scan, exact by construction
        for probe in probes[:2]:
            await (await conn.execute(exact_sql, (MODEL, probe, k))).fetchall()  # warm the cache
        started = time.perf_counter()
        for probe in probes[: args.exact_queries]:
            rows = await (await conn.execute(exact_sql, (MODEL, probe, k))).fetchall()
            exact_results.append({position[r[0]] for r in rows})
        exact_s = time.perf_counter() - started
        await conn.execute("reset enable_indexscan")
    for probe in probes[:5]:
        await index.search(MODEL, probe, k, SearchFilter())  # warm
    sweep = {}
    for ef_search in sorted({40, 100, 200, 400, args.ef_search}):
        swept = PgVectorIndex(pool, ef_search=ef_search)
        await swept.prepare(MODEL, 384)  # the index exists: this only records the dimensions
        started = time.perf_counter()
        results = [{position[h.chunk_id] for h in await swept.search(MODEL, probe, k, SearchFilter())}
                   for probe in probes]
        qps = len(probes) / (time.perf_counter() - started)
        recall = float(np.mean([len(h & e) / k for h, e in zip(results, exact_results, strict=False)]))
        sweep[ef_search] = {"recall_at_10": round(recall, 4), "qps": round(qps, 1), "qps_ratio": round(qps * exact_s / args.exact_queries, 1)}
        log(f"  (b) ef_search {ef_search:>3}: recall@10 {recall:.3f}, {qps:.0f} queries/s")
    await pool.close()
    truth_check = set(np.argsort(-(vectors @ probes[0]))[:k].tolist())
    exact_qps = args.exact_queries / exact_s
    chosen = sweep[args.ef_search]
    return {
        "ann": {
            "chunks": args.chunks, "dims": 384, "clusters": max(1, args.chunks // 1000), "vectors": "clustered synthetic unit",
            "ef_search": args.ef_search, "load_s": round(load_s, 1), "build_s": round(build_s, 1),
            "exact_agrees_with_numpy": exact_results[0] == truth_check,
            "recall_at_10": chosen["recall_at_10"], "hnsw_qps": chosen["qps"], "exact_qps": round(exact_qps, 2),
            "qps_ratio": chosen["qps_ratio"], "ef_search_sweep": sweep,
        }
    }


# --------------------------------------------------------------------------------------------

async def create_events_stream(nats_url: str) -> None:
    """BEV_EVENTS, as the fleet's supervisor creates it: the service publishes its job events there."""
    import nats

    nc = await nats.connect(nats_url)
    await nc.jetstream().add_stream(name="BEV_EVENTS", subjects=["bev.events.>"])
    await nc.close()


def met(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from services.embeddings.settings import EmbeddingsConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", type=int, default=64, help="concurrent single-text callers (default 64)")
    parser.add_argument("--texts-per-round", type=int, default=128, help="texts per throughput round (default 128)")
    parser.add_argument("--rounds", type=int, default=12, help="alternating throughput rounds (default 12)")
    parser.add_argument("--chunks", type=int, default=100_000, help="vectors in the ANN part (default 100000)")
    parser.add_argument("--queries", type=int, default=500, help="HNSW queries (default 500)")
    parser.add_argument("--exact-queries", type=int, default=50, help="exact-scan queries (default 50)")
    parser.add_argument("--ef-search", type=int, default=EmbeddingsConfig().hnsw_ef_search,
                        help="hnsw.ef_search for the headline figures (default: the service's setting)")
    parser.add_argument("--docs", type=int, default=120, help="documents to ingest (default 120)")
    parser.add_argument("--big-mb", type=float, default=3.0,
                        help="size of the large upload in MB, at most 3.1 (one RPC carries it; default 3)")
    parser.add_argument("--quick", action="store_true", help="about a minute: 20k chunks, fewer texts and docs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.chunks, args.queries, args.exact_queries, args.docs, args.big_mb = 6, 20_000, 200, 30, 60, 0.25
    if not 0 < args.big_mb <= 3.1:
        parser.error("--big-mb must be more than 0 and at most 3.1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import psycopg

    from bev.engines import NatsServer, Postgres
    from services.embeddings.model import SentenceEmbedder

    started = time.perf_counter()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp, \
            NatsServer(Path(tmp) / "nats") as nats_server, Postgres(Path(tmp) / "pg", fsync=False) as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("create database bench_ann")
        asyncio.run(create_events_stream(nats_server.url))
        ann_dsn = urllib.parse.urlsplit(pg.dsn)._replace(path="/bench_ann").geturl()
        log(f"nats-server at {nats_server.url}, postgres at :{pg.port}; starting the embeddings service")
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_server_process, args=(nats_server.url, pg.dsn, child), daemon=True)
        process.start()
        embedder = SentenceEmbedder.load(MODEL)
        try:
            if not parent.poll(180):
                raise RuntimeError("the embeddings service did not start within 180 s")
            parent.recv()
            pids = [pid for pid in (process.pid, nats_server.pid) if pid is not None]
            assert pg.pid is not None
            report.update(asyncio.run(measure_service(args, nats_server.url, embedder, pids, pg.pid)))
        finally:
            parent.send("stop")
            process.join(30)
        report.update(asyncio.run(measure_ann(args, ann_dsn)))
    ratios = {"throughput_ratio": report["throughput"]["ratio"], "hnsw_recall_at_10": report["ann"]["recall_at_10"],
              "hnsw_qps_ratio": report["ann"]["qps_ratio"], "big_ingest_ratio": report["big_ingest"]["ratio_vs_encode"]}
    output = {
        "bench": "embeddings",
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "device": embedder.device,
        "config": {key: getattr(args, key) for key in
                   ("callers", "texts_per_round", "rounds", "chunks", "queries", "exact_queries", "ef_search", "docs",
                    "big_mb", "quick")},
        **report,
        "ratios": ratios,
        "targets": {key: f"{op} {bound}" for key, (op, bound) in TARGETS.items()},
        "targets_met": {key: met(ratios[key], op, bound) for key, (op, bound) in TARGETS.items()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    t, a, i = output["throughput"], output["ann"], output["ingest"]
    log("")
    log(f"{'measure':<44} {'value':>12}   baseline (same run)")
    log(f"{'(a) Embed, 64 callers x 1 text (texts/s)':<44} {t['service_per_s']:>12}   in-process batch 32: "
        f"{t['in_process_batch32_per_s']}/s  ratio {t['ratio']} (mean batch {t['mean_batch_size']})")
    log(f"{'(a) texts per CPU-second, all processes':<44} {t['service_texts_per_cpu_s']:>12}   in-process: "
        f"{t['in_process_texts_per_cpu_s']}  ratio {t['cpu_efficiency_ratio']}")
    ann_label = f"(b) HNSW recall@10, {a['chunks']} chunks"
    log(f"{ann_label:<44} {a['recall_at_10']:>12}   exact scan = 1.0")
    qps_label = f"(b) HNSW queries/s, ef_search {a['ef_search']}"
    log(f"{qps_label:<44} {a['hnsw_qps']:>12}   exact scan: {a['exact_qps']}/s  ratio {a['qps_ratio']}x")
    log(f"{'(c) ingest documents/s':<44} {i['documents_per_s']:>12}   {i['chunks_per_s']} chunks/s vs encode "
        f"{i['in_process_encode_chunks_per_s']}/s  ratio {i['ratio_vs_encode']}")
    b = output["big_ingest"]
    big_label = f"(d) {b['bytes'] / 1e6:.2f} MB upload, SubmitIngest (chunks/s)"
    log(f"{big_label:<44} {b['chunks_per_s']:>12}   {b['chunks']} chunks in {b['seconds']}s; encode alone "
        f"{b['in_process_encode_chunks_per_s']}/s ({b['in_process_encode_s']}s)  ratio {b['ratio_vs_encode']}")
    log(f"{'(d) CPU ms per chunk, service+postgres+nats':<44} {b['service_cpu_ms_per_chunk']:>12}   in-process encode: "
        f"{b['in_process_cpu_ms_per_chunk']}  ratio {b['cpu_efficiency_ratio']}")
    missed = [key for key, ok in output["targets_met"].items() if not ok]
    log(f"targets missed: {', '.join(missed)}" if missed else "all targets met")
    print(json.dumps(output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
