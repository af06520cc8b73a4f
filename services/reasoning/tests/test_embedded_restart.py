"""The embedded llama.cpp server is the reasoning service's own engine: killed, it is started again
and the fast tier serves once more, without restarting the service."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from bev.reasoning.v1 import reasoning_pb2
from bev.rpc import CallContext, InstanceInfo
from services.reasoning.servicer import assemble
from services.reasoning.settings import EmbeddedLlamaConfig, ReasoningConfig

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]


async def test_a_killed_embedded_server_is_restarted(tmp_path: Path) -> None:
    config = ReasoningConfig(embedded=EmbeddedLlamaConfig(n_threads=1), health_interval_s=0.5)
    servicer = await assemble(InstanceInfo(service="reasoning"), config, [], {}, tmp_path)
    await servicer.start()
    try:
        engine = servicer._embedded
        assert engine is not None and engine.pid is not None
        first = engine.pid
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        while engine.pid in (None, first) or not servicer.router.backends[0].healthy:
            assert time.monotonic() - killed < 60, "the embedded server did not come back"
            await asyncio.sleep(0.2)
        print(f"embedded llama.cpp back in {time.monotonic() - killed:.1f}s")
        request = reasoning_pb2.GenerateRequest(prompt="Say hi.", max_tokens=4)
        answer = await servicer.Generate(request, CallContext("reasoning", "Generate", "nats", time.monotonic() + 60))
        assert answer.usage.completion_tokens > 0 and answer.backend == "llama.cpp"
    finally:
        await servicer.close()
