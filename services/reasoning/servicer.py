"""Reasoning: llama.cpp in-process (the embedded default). Tiered routing over vLLM grows here (issue C1)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from bev.common.v1 import common_pb2
from bev.reasoning.v1 import reasoning_pb2
from bev.reasoning.v1.reasoning_rpc import ReasoningServicer
from bev.rpc import CallContext, RpcError, StatusCode
from bev.runtime import ServiceRuntime
from services.reasoning.llm import Generation, LlamaCppModel
from services.reasoning.settings import ReasoningConfig, Settings

_DONE = object()


class Reasoning(ReasoningServicer):
    def __init__(self, runtime: ServiceRuntime[Settings], model: LlamaCppModel) -> None:
        super().__init__(runtime.info)
        self.config: ReasoningConfig = runtime.settings.reasoning
        self.model = model

    async def health_checks(self) -> list[common_pb2.HealthCheck]:
        return [common_pb2.HealthCheck(name="model", ok=True, detail=f"{self.model.name} (llama.cpp, cpu)")]

    def _max_tokens(self, request: reasoning_pb2.GenerateRequest) -> int:
        if request.max_tokens < 0 or request.max_tokens > self.config.max_tokens_limit:
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"max_tokens must be within 0..{self.config.max_tokens_limit}")
        return request.max_tokens or self.config.default_max_tokens

    async def _pieces(self, request: reasoning_pb2.GenerateRequest) -> AsyncIterator[str | Generation]:
        """Runs the blocking llama.cpp stream on a worker thread; yields text pieces, then the Generation.

        If the caller goes away, the worker is told to stop so the model is freed at once.
        """
        if not request.prompt:
            raise RpcError(StatusCode.INVALID_ARGUMENT, "prompt is empty")
        max_tokens = self._max_tokens(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def work() -> None:
            try:
                with self.model.chat_stream(
                    [{"role": "user", "content": request.prompt}], max_tokens, request.temperature, list(request.stop)
                ) as stream:
                    for piece in stream:
                        if cancelled.is_set():
                            return
                        loop.call_soon_threadsafe(queue.put_nowait, piece)
                    loop.call_soon_threadsafe(queue.put_nowait, stream.result)
            except Exception as exc:  # handed to the event loop, which raises it to the caller
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        worker = loop.run_in_executor(None, work)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            cancelled.set()
            await worker

    async def Generate(self, request: reasoning_pb2.GenerateRequest, ctx: CallContext) -> reasoning_pb2.GenerateResponse:
        text: list[str] = []
        async for item in self._pieces(request):
            if isinstance(item, Generation):
                return reasoning_pb2.GenerateResponse(
                    text="".join(text),
                    model=self.model.name,
                    finish_reason=item.finish_reason,
                    usage=reasoning_pb2.Usage(prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens),
                    backend="llama.cpp",
                )
            text.append(item)
        raise RpcError(StatusCode.INTERNAL, "generation ended without a result")

    async def GenerateStream(
        self, request: reasoning_pb2.GenerateRequest, ctx: CallContext
    ) -> AsyncIterator[reasoning_pb2.GenerateChunk]:
        async for item in self._pieces(request):
            if isinstance(item, Generation):
                yield reasoning_pb2.GenerateChunk(
                    done=True,
                    finish_reason=item.finish_reason,
                    usage=reasoning_pb2.Usage(prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens),
                )
            else:
                yield reasoning_pb2.GenerateChunk(text=item)

    async def ListModels(
        self, request: reasoning_pb2.ListModelsRequest, ctx: CallContext
    ) -> reasoning_pb2.ListModelsResponse:
        return reasoning_pb2.ListModelsResponse(
            models=[
                reasoning_pb2.ModelInfo(
                    name=self.model.name, tier=reasoning_pb2.TIER_FAST, backend="llama.cpp",
                    context_length=self.model.context_length,
                )
            ]
        )


async def build(runtime: ServiceRuntime[Settings]) -> Reasoning:
    config = runtime.settings.reasoning
    model = await asyncio.to_thread(
        LlamaCppModel.load, config.model_path, config.n_ctx, config.n_threads or None
    )
    return Reasoning(runtime, model)
