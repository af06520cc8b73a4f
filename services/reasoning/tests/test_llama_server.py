"""The embedded llama.cpp server: it serves SmolLM2 over the OpenAI API and dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bev.engines.llama_server import LlamaServer

STARTER = """
import sys, time
from pathlib import Path
from bev.engines.llama_server import LlamaServer
server = LlamaServer(Path(sys.argv[1]), n_threads=1)
server.start()
print(server.pid, flush=True)
time.sleep(120)
"""


def test_serves_the_openai_api(llama_servers: tuple[LlamaServer, LlamaServer]) -> None:
    server = llama_servers[0]
    with httpx.Client(trust_env=False, timeout=60) as http:
        models = http.get(f"{server.base_url}/models").json()
        answer = http.post(f"{server.base_url}/chat/completions", json={
            "model": server.model_alias, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4})
    assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0


def test_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # no chance to stop its children
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the llama.cpp server outlived the process that started it")
