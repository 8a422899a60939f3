"""Specialists that fine-tune the encoder: the top layers of the packaged MiniLM, per task.

:class:`FineTunedLabelSpecialist` (a sequence classifier) and :class:`FineTunedEntitySpecialist`
(a BIO tagger over whitespace words) split all-MiniLM-L6-v2 in two:

- a **shared trunk**, the embeddings and the bottom ``6 - trained_layers`` transformer layers,
  frozen and never copied (one per process and encoder, see :func:`shared_trunk`);
- a **per-task top**: copies of the top ``trained_layers`` layers, fine-tuned, then mean pooling
  and a linear classifier over the frontier's labels (label heads), or a linear classifier over
  each word's first sub-token state (entity heads).

Why a shared trunk and not LoRA over all layers: the trunk's token states are computed once per
training text and reused every epoch, so an epoch costs the top layers' forward and backward only
(about a third of a full fine-tune on a 2-core CPU); the artifact holds the top layers in float16
(2 layers: 3.6M parameters, 7 MB), and serving runs the trunk plus one task's top, the same six
layers a frozen-encoder head runs, with no adapter arithmetic.

Training is transformers ``Trainer`` over the cached trunk states, length-grouped batches, a
linear schedule with separate learning rates for the layers and the freshly initialised
classifier. The number of epochs is chosen on a seeded held-out slice of the pairs (the best
epoch's weights are kept); the model kept is the one trained on the rest.

Evidence is the same as the frozen heads': for a label, the chosen class's log-probability and
the top-k class log-probabilities; for an entity list, each word's log-probability of its tag,
so ``max_nll`` is the least sure word of the sentence. The tagger's epoch is chosen on the share of
held-out sentences whose every tag is right, the unit the cascade accepts or escalates.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from routenlp_ray._exceptions import ArtifactError, NotFittedError
from routenlp_ray.models.tracing import CHECK_TEXTS, exact_trace
from routenlp_ray.specialists._answer import HeadAnswer
from routenlp_ray.specialists.artifact import HEAD_FILE, read_head
from routenlp_ray.specialists.bio import O_TAG, align_entities, entity_answer, parse_entity_answer

__all__ = ["FineTunedEntitySpecialist", "FineTunedLabelSpecialist", "shared_trunk"]

WEIGHTS_FILE = "top.safetensors"
IGNORED = -100  # a label torch's cross-entropy skips: padding, and words the tokenizer cut off


class _Trunk:
    """Embeddings and the bottom ``n_layers`` layers of the encoder, frozen, in eval mode.

    float32, or with ``quantize`` int8 dynamic quantization of its linear layers (as the frozen heads'
    encoder runs): a head on a quantized trunk is trained on the same int8 states it is served on.
    """

    def __init__(self, model_source: str, n_layers: int, max_length: int, quantize: bool = False,
                 trace: bool = True) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from routenlp_ray.models.sources import resolve_model_source

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = str(resolve_model_source(model_source))
        self.torch = torch
        self.model_source, self.n_layers, self.max_length, self.quantize = model_source, n_layers, max_length, quantize
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        self.config = model.config
        self.total_layers = len(model.encoder.layer)
        if not 0 <= n_layers < self.total_layers:
            raise ValueError(f"the trunk keeps {n_layers} of the encoder's {self.total_layers} layers; "
                             f"it must keep fewer than all of them")
        self.embeddings = model.embeddings
        self.layers = model.encoder.layer[:n_layers]
        # The layers above the trunk, as loaded: a new task's top starts from them.
        self.upper_layers = model.encoder.layer[n_layers:]
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if quantize:
            self.layers = quantize_int8(self.layers)
        self._traced = self._trace() if trace else None

    def tokenize(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def tokenize_words(self, sentences: Sequence[Sequence[str]], max_length: int) -> tuple[Any, list[list[int]]]:
        """Tokenize pre-split words; per sentence, the position of each word's first sub-token (-1: cut off)."""
        batch = self.tokenizer([list(words) for words in sentences], is_split_into_words=True, padding=True,
                               truncation=True, max_length=max_length, return_tensors="pt")
        firsts = []
        for row, words in enumerate(sentences):
            first = [-1] * len(words)
            for position, word in enumerate(batch.word_ids(row)):
                if word is not None and first[word] < 0:
                    first[word] = position
            firsts.append(first)
        return batch, firsts

    def states(self, batch: Any) -> Any:
        """Token states after the trunk, shape (batch, tokens, hidden)."""
        with self.torch.inference_mode():
            return (self._traced or self._eager)(*self._inputs(batch))

    def _inputs(self, batch: Any) -> tuple[Any, Any, Any]:
        """(input ids, token types, attention mask): the trunk's inputs, positional, as the trace takes them."""
        token_types = batch.get("token_type_ids")
        if token_types is None:  # what BERT embeddings assume when none are given
            token_types = self.torch.zeros_like(batch["input_ids"])
        return batch["input_ids"], token_types, batch["attention_mask"]

    def _eager(self, input_ids: Any, token_type_ids: Any, attention_mask: Any) -> Any:
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return hidden

    def _trace(self) -> Any:
        """The trunk as a TorchScript trace with its exact eager states, or None (see routenlp_ray.models.tracing)."""
        torch = self.torch
        trunk = self

        class TrunkStates(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embeddings, self.layers = trunk.embeddings, trunk.layers

            def forward(self, input_ids: Any, token_type_ids: Any, attention_mask: Any) -> Any:
                return trunk._eager(input_ids, token_type_ids, attention_mask)

        batches = [self.tokenize([text]) for text in CHECK_TEXTS] + [self.tokenize(CHECK_TEXTS)]
        checks = [self._inputs(batch) for batch in batches]
        return exact_trace(TrunkStates().eval(), checks[0], checks, f"trunk of {self.model_source}")

    @property
    def serving_batch_size(self) -> int | None:
        """1 where a text's states depend on its batch-mates, None where batching changes nothing.

        int8 dynamic quantization scales each layer's activations by the whole batch's range, so a
        quantized trunk's states for a text differ with what it is batched with. Its heads are served
        one text at a time, and must be trained on states made the same way.
        """
        return 1 if self.quantize else None

    def _cache_batch_size(self, batch_size: int | None) -> int:
        return batch_size or self.serving_batch_size or 64

    def token_states(self, texts: Sequence[str], batch_size: int | None = None) -> list[tuple[list[int], Any]]:
        """Per text: (its token ids, its trunk states of shape (tokens, hidden)), batched by length
        (one at a time on a quantized trunk, as served: see ``serving_batch_size``)."""
        batch_size = self._cache_batch_size(batch_size)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[Any] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = self.tokenize([texts[i] for i in chunk])
            states = self.states(batch)
            for row, i in enumerate(chunk):
                n = int(batch["attention_mask"][row].sum())
                out[i] = (batch["input_ids"][row, :n].tolist(), states[row, :n].clone())
        return out

    def word_states(self, sentences: Sequence[Sequence[str]], max_length: int,
                    batch_size: int | None = None) -> list[tuple[list[int], Any, list[int]]]:
        """Per sentence: (token ids, trunk states (tokens, hidden), each word's first sub-token or -1), batched
        as ``token_states`` batches."""
        batch_size = self._cache_batch_size(batch_size)
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out: list[Any] = [None] * len(sentences)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch, firsts = self.tokenize_words([sentences[i] for i in chunk], max_length)
            states = self.states(batch)
            for row, i in enumerate(chunk):
                n = int(batch["attention_mask"][row].sum())
                out[i] = (batch["input_ids"][row, :n].tolist(), states[row, :n].clone(), firsts[row])
        return out


def shared_trunk(model_source: str, n_layers: int, max_length: int = 256, quantize: bool = False,
                 trace: bool = True) -> _Trunk:
    """The one trunk every fine-tuned head on this encoder, depth and precision shares in this process."""
    # One cache key however the arguments are spelled (lru_cache keys defaults left out apart).
    return _cached_trunk(model_source, n_layers, max_length, bool(quantize), bool(trace))


@lru_cache(maxsize=4)
def _cached_trunk(model_source: str, n_layers: int, max_length: int, quantize: bool, trace: bool) -> _Trunk:
    return _Trunk(model_source, n_layers, max_length, quantize, trace)


def quantize_int8(module: Any) -> Any:
    """A copy of ``module`` with int8 dynamic quantization of its linear layers (weights int8, activations
    quantized per batch): on CPU about 2.5x faster than float32 for MiniLM's layers."""
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, which this CPU build does not ship.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear}, dtype=torch.qint8)


def additive_mask(attention_mask: Any, dtype: Any) -> Any:
    """(batch, 1, 1, tokens) mask to add to attention scores: 0 for tokens, the dtype's minimum for padding."""
    import torch

    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _top_layers(trunk: _Trunk) -> Any:
    """Trainable copies of the layers above the trunk: a new task's top starts from them."""
    import torch

    layers = torch.nn.ModuleList(copy.deepcopy(list(trunk.upper_layers)))
    for parameter in layers.parameters():
        parameter.requires_grad_(True)
    return layers


def _zero_linear(width: int, n_classes: int) -> Any:
    """A classifier that starts at zero: uniform answers until it has learned something."""
    import torch

    classifier = torch.nn.Linear(width, n_classes)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    return classifier


def _top_module(trunk: _Trunk, n_classes: int, dropout: float) -> Any:
    import torch

    class TopClassifier(torch.nn.Module):
        """The task's top layers, mean pooling over the tokens, and a linear classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = _top_layers(trunk)
            self.dropout = torch.nn.Dropout(dropout)
            self.classifier = _zero_linear(trunk.config.hidden_size, n_classes)

        def forward(self, hidden_states: Any, attention_mask: Any, labels: Any = None) -> dict[str, Any]:
            mask = additive_mask(attention_mask, hidden_states.dtype)
            for layer in self.layers:
                hidden_states = layer(hidden_states, mask)
            weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            pooled = (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            logits = self.classifier(self.dropout(pooled))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
            return out

    return TopClassifier()


def _top_tagger(trunk: _Trunk, n_tags: int, dropout: float) -> Any:
    import torch

    class TopTagger(torch.nn.Module):
        """The task's top layers and a linear tag classifier on each word's first sub-token."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = _top_layers(trunk)
            self.dropout = torch.nn.Dropout(dropout)
            self.classifier = _zero_linear(trunk.config.hidden_size, n_tags)

        def forward(self, hidden_states: Any, attention_mask: Any, word_index: Any, labels: Any = None) -> dict[str, Any]:
            mask = additive_mask(attention_mask, hidden_states.dtype)
            for layer in self.layers:
                hidden_states = layer(hidden_states, mask)
            # (batch, words, hidden): each word's first sub-token (index 0, [CLS], for padding and cut-off words).
            words = torch.gather(hidden_states, 1, word_index.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1]))
            logits = self.classifier(self.dropout(words))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                                ignore_index=IGNORED)
            return out

    return TopTagger()


def _padded_states(items: list[dict[str, Any]]) -> tuple[Any, Any]:
    import torch

    width = max(item["states"].shape[0] for item in items)
    hidden = items[0]["states"].shape[1]
    states = torch.zeros(len(items), width, hidden)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for row, item in enumerate(items):
        n = item["states"].shape[0]
        states[row, :n], mask[row, :n] = item["states"], 1
    return states, mask


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad cached trunk states into a batch; ``input_ids`` only tell the length-grouped sampler the lengths."""
    import torch

    states, mask = _padded_states(items)
    return {"hidden_states": states, "attention_mask": mask,
            "labels": torch.tensor([item["labels"] for item in items], dtype=torch.long)}


def _collate_words(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad cached trunk states, word positions and word tags (IGNORED where there is no word)."""
    import torch

    states, mask = _padded_states(items)
    width = max(1, max(len(item["word_index"]) for item in items))
    word_index = torch.zeros(len(items), width, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORED, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["word_index"])
        word_index[row, :n] = torch.tensor(item["word_index"], dtype=torch.long).clamp(min=0)
        labels[row, :n] = torch.tensor(item["labels"], dtype=torch.long)
    return {"hidden_states": states, "attention_mask": mask, "word_index": word_index, "labels": labels}


class _FineTunedHead:
    """What both fine-tuned heads share: the trunk, the Trainer run that picks its epoch, the artifact.

    Parameters appear only here; ``fit`` returns ``self`` and learned attributes end in ``_``.
    ``epochs`` is the most it trains; the epoch kept is the best on the held-out slice.
    """

    kind: str
    _metric: str  # what the held-out slice is scored on, to pick the epoch
    #: It tokenizes with its trunk's own tokenizer and touches neither the shared encoder's tokenizer nor its
    #: encoding cache, so an engine may drive it from another thread while that encoder encodes.
    owns_tokenizer = True

    def __init__(
        self,
        encoder: Any = None,
        *,
        encoder_source: str | None = None,
        trained_layers: int = 2,
        epochs: int = 4,
        learning_rate: float = 1e-4,
        head_learning_rate: float = 2e-3,
        batch_size: int = 32,
        max_length: int = 256,
        dropout: float = 0.1,
        holdout: float = 0.1,
        seed: int = 0,
        num_threads: int | None = None,
        init_from: str | os.PathLike[str] | None = None,
        quantize: bool = False,
    ) -> None:
        from routenlp_ray.models.encoder import MINILM_SOURCE

        # ``encoder`` is the tier's shared SpecialistEncoder (for its source); this head runs its own trunk.
        self.encoder = encoder
        self.encoder_source = encoder_source or getattr(encoder, "model_source", None) or MINILM_SOURCE
        self.trained_layers = trained_layers
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.head_learning_rate = head_learning_rate
        self.batch_size = batch_size
        self.max_length = max_length
        self.dropout = dropout
        self.holdout = holdout
        self.seed = seed
        self.num_threads = num_threads
        self.init_from = init_from
        # int8 trunk in training and serving, int8 top in serving (the top trains in float32).
        self.quantize = quantize

    # -- what each head defines -------------------------------------------------------------
    def _module(self, trunk: _Trunk, n_classes: int) -> Any:
        raise NotImplementedError

    def _collator(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def _score(prediction: Any) -> dict[str, float]:
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------
    def _trunk(self) -> _Trunk:
        import torch

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        # The trunk depth is the encoder's layers minus the trained ones; read the depth from its config.
        total = _encoder_depth(self.encoder_source)
        if not 1 <= self.trained_layers <= total:
            raise ValueError(f"trained_layers must be between 1 and {total} (the encoder's layers), "
                             f"got {self.trained_layers}")
        # Traced as the tier's encoder is asked to be (engine.trace); traced or not, the states are the same.
        return shared_trunk(self.encoder_source, total - self.trained_layers, self._trunk_max_length(), self.quantize,
                            getattr(self.encoder, "trace", True))

    def _trunk_max_length(self) -> int:
        return self.max_length

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(held-out, fit) indices: a seeded ``holdout`` share, none below 20 examples."""
        order = np.random.default_rng(self.seed).permutation(n)
        n_held = int(n * self.holdout) if n >= 20 else 0
        return order[:n_held], order[n_held:]

    def _train(self, trunk: _Trunk, items: list[dict[str, Any]]) -> None:
        """Fine-tune a new top on ``items`` with transformers ``Trainer``; keep the best held-out epoch."""
        import torch
        from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

        torch.manual_seed(self.seed)
        held, fit = self._split(len(items))
        train_items, held_items = [items[i] for i in fit], [items[i] for i in held]
        model = self._module(trunk, len(self.classes_))
        if self.init_from is not None:
            self._continue_from(model, Path(self.init_from))
        optimizer = torch.optim.AdamW([
            {"params": list(model.layers.parameters()), "lr": self.learning_rate},
            {"params": list(model.classifier.parameters()), "lr": self.head_learning_rate},
        ], weight_decay=0.01)
        steps = -(-len(train_items) // self.batch_size) * self.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
        with tempfile.TemporaryDirectory(prefix=f"{self.kind}-") as run_dir:
            evaluate = "epoch" if held_items else "no"
            args = TrainingArguments(
                output_dir=run_dir, per_device_train_batch_size=self.batch_size, per_device_eval_batch_size=64,
                num_train_epochs=self.epochs, eval_strategy=evaluate, save_strategy=evaluate, save_total_limit=1,
                load_best_model_at_end=bool(held_items), metric_for_best_model=self._metric, greater_is_better=True,
                train_sampling_strategy="group_by_length", use_cpu=True, dataloader_num_workers=0,
                remove_unused_columns=False, report_to=[], logging_strategy="no", seed=self.seed,
                ddp_find_unused_parameters=False,
                disable_tqdm=True, save_only_model=True,
            )
            trainer = Trainer(model=model, args=args, train_dataset=train_items, eval_dataset=held_items or None,
                              data_collator=self._collator(), compute_metrics=self._score,
                              optimizers=(optimizer, scheduler))
            started = time.perf_counter()
            trainer.train()
            self.train_seconds_ = time.perf_counter() - started
            key = f"eval_{self._metric}"
            history = [h for h in trainer.state.log_history if key in h]
            self.holdout_scores_ = {int(round(h["epoch"])): float(h[key]) for h in history}
            self.epochs_ = (max(self.holdout_scores_, key=lambda e: (self.holdout_scores_[e], -e))
                            if self.holdout_scores_ else self.epochs)
        self.n_fit_, self.holdout_index_ = len(train_items), np.sort(held)
        self.model_ = model.eval()

    def _continue_from(self, model: Any, folder: Path) -> None:
        """Start from a fitted head: its layers, and its classifier rows for the classes both know."""
        import torch

        base = type(self).load(folder)
        if (base.encoder_source, base.trained_layers) != (self.encoder_source, self.trained_layers):
            raise ValueError(f"init_from {str(folder)!r} fine-tuned {base.trained_layers} layers of "
                             f"{base.encoder_source!r}; this head fine-tunes {self.trained_layers} of {self.encoder_source!r}")
        model.layers.load_state_dict(base.model_.layers.state_dict())
        known = {str(c): i for i, c in enumerate(base.classes_)}
        with torch.no_grad():
            for row, name in enumerate(self.classes_.tolist()):
                if name in known:
                    model.classifier.weight[row] = base.model_.classifier.weight[known[name]]
                    model.classifier.bias[row] = base.model_.classifier.bias[known[name]]
        self.continued_classes_ = sorted(set(known) & set(self.classes_.tolist()))

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit or load first")

    def _served_model(self) -> Any:
        """The top that answers: ``model_`` itself, or its int8 copy with ``quantize`` (made once)."""
        self._check_fitted()
        if not self.quantize:
            return self.model_
        if getattr(self, "_int8_of", None) is not self.model_:
            self._int8_model, self._int8_of = quantize_int8(self.model_), self.model_
        return self._int8_model

    # -- artifact ---------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the top layers and classifier in float16 (``top.safetensors``) and the settings (``head.json``)."""
        from safetensors.torch import save_file

        self._check_fitted()
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to(dtype=_half()).contiguous() for k, v in self.model_.state_dict().items()},
                  str(target / WEIGHTS_FILE))
        settings = {
            "kind": self.kind,
            "encoder_source": self.encoder_source,
            "classes": [str(c) for c in self.classes_],
            "trained_layers": self.trained_layers,
            "max_length": self.max_length,
            "dropout": self.dropout,
            "quantize": self.quantize,
            "epochs": self.epochs_,
            "holdout_scores": {str(k): v for k, v in self.holdout_scores_.items()},
            "training": {"learning_rate": self.learning_rate, "head_learning_rate": self.head_learning_rate,
                         "batch_size": self.batch_size, "max_epochs": self.epochs, "holdout": self.holdout,
                         "seed": self.seed, "init_from": None if self.init_from is None else str(self.init_from)},
        }
        (target / HEAD_FILE).write_text(json.dumps(settings, indent=2, ensure_ascii=False))
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike[str], encoder: Any = None, num_threads: int | None = None) -> Any:
        from safetensors.torch import load_file

        source = Path(folder)
        head = read_head(source)
        if head.get("kind") != cls.kind:
            raise ArtifactError(f"{str(source / HEAD_FILE)!r} holds a {head.get('kind')!r} head, not a {cls.kind!r} one")
        self = cls(encoder, encoder_source=head["encoder_source"], trained_layers=int(head["trained_layers"]),
                   max_length=int(head["max_length"]), dropout=float(head.get("dropout", 0.1)),
                   num_threads=num_threads, quantize=bool(head.get("quantize", False)))
        if encoder is not None and getattr(encoder, "model_source", head["encoder_source"]) != head["encoder_source"]:
            raise ArtifactError(f"{str(source / HEAD_FILE)!r} was trained on encoder {head['encoder_source']!r}, "
                                f"not the tier's {encoder.model_source!r}")
        self.classes_ = np.asarray(head["classes"])
        self.epochs_ = int(head.get("epochs", 0))
        self.holdout_scores_ = {int(k): float(v) for k, v in head.get("holdout_scores", {}).items()}
        model = self._module(self._trunk(), len(self.classes_))
        try:
            weights = load_file(str(source / WEIGHTS_FILE))
            model.load_state_dict({k: v.float() for k, v in weights.items()})
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a corrupt header
            raise ArtifactError(f"fine-tuned head {str(source / WEIGHTS_FILE)!r} cannot be loaded: {exc}") from None
        self.model_ = model.eval()
        return self


class FineTunedLabelSpecialist(_FineTunedHead):
    """A label classifier that fine-tunes the encoder's top layers on (query, frontier answer) pairs."""

    kind = "finetuned_label"
    _metric = "accuracy"

    def _module(self, trunk: _Trunk, n_classes: int) -> Any:
        return _top_module(trunk, n_classes, self.dropout)

    def _collator(self) -> Any:
        return _collate

    @staticmethod
    def _score(prediction: Any) -> dict[str, float]:
        return {"accuracy": float(np.mean(np.argmax(prediction.predictions, -1) == prediction.label_ids))}

    def fit(self, texts: Sequence[str], answers: Sequence[str]) -> "FineTunedLabelSpecialist":
        if len(texts) != len(answers) or not texts:
            raise ValueError(f"fit needs as many answers as texts, at least one (got {len(texts)} and {len(answers)})")
        texts, labels = list(texts), [a.strip() for a in answers]
        trunk = self._trunk()
        self.classes_ = np.asarray(sorted(set(labels)))
        label_id = {c: i for i, c in enumerate(self.classes_.tolist())}
        started = time.perf_counter()
        cached = trunk.token_states(texts)
        self.encode_seconds_ = time.perf_counter() - started
        self._train(trunk, [{"input_ids": cached[i][0], "states": cached[i][1], "labels": label_id[labels[i]]}
                            for i in range(len(texts))])
        return self

    # -- answering --------------------------------------------------------------------------
    def _logits(self, texts: list[str]) -> np.ndarray:
        trunk = self._trunk()
        batch = trunk.tokenize(texts)
        states = trunk.states(batch)
        with trunk.torch.inference_mode():
            return self._served_model()(states, batch["attention_mask"])["logits"].float().numpy()

    def predict_proba(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(classes_)); texts are batched by length, 32 at a time
        (one at a time on a quantized trunk, as it was trained)."""
        self._check_fitted()
        batch_size = batch_size or self._trunk().serving_batch_size or 32
        texts = list(texts)
        probs = np.zeros((len(texts), len(self.classes_)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            probs[chunk] = _softmax(self._logits([texts[i] for i in chunk]))
        return probs

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [str(self.classes_[i]) for i in self.predict_proba(texts).argmax(axis=1)]

    def answer(self, texts: Sequence[str], top_k: int = 5) -> list[HeadAnswer]:
        answers = []
        for row in self.predict_proba(texts):
            logp = np.log(np.clip(row, 1e-12, 1.0))
            best = int(row.argmax())
            top = np.sort(logp)[::-1][:top_k]
            answers.append(HeadAnswer(str(self.classes_[best]), [float(logp[best])], [[float(x) for x in top]]))
        return answers


class FineTunedEntitySpecialist(_FineTunedHead):
    """A BIO tagger over whitespace words that fine-tunes the encoder's top layers; answers a JSON entity list.

    Tags come from the frontier's entity lists aligned back onto the words
    (:func:`~routenlp_ray.specialists.bio.align_entities`), as for the frozen tagger. A word's tag is
    read from its first sub-token; a word past ``max_length`` tokens gets a uniform row, so the
    answer that needs it is never sure.
    """

    kind = "finetuned_entities"
    _metric = "sentence_accuracy"

    def __init__(self, encoder: Any = None, *, max_length: int = 512, **params: Any) -> None:
        # Entity sentences run long (loan agreements) and a cut-off word cannot be tagged: the encoder's full 512.
        super().__init__(encoder, max_length=max_length, **params)

    def _trunk_max_length(self) -> int:
        # Tagging passes its own max_length to the tokenizer; keying the trunk on the label heads' default
        # lets a tagger and label heads of the same depth share one trunk in a process.
        return 256

    def _module(self, trunk: _Trunk, n_classes: int) -> Any:
        return _top_tagger(trunk, n_classes, self.dropout)

    def _collator(self) -> Any:
        return _collate_words

    @staticmethod
    def _score(prediction: Any) -> dict[str, float]:
        # A sentence counts only if every word's tag is right: the unit the cascade accepts.
        labels = prediction.label_ids
        right = (np.argmax(prediction.predictions, -1) == labels) | (labels == IGNORED)
        return {"sentence_accuracy": float(np.mean(right.all(axis=1)))}

    def fit(self, texts: Sequence[str], answers: Sequence[str]) -> "FineTunedEntitySpecialist":
        if len(texts) != len(answers) or not texts:
            raise ValueError(f"fit needs as many answers as texts, at least one (got {len(texts)} and {len(answers)})")
        sentences = [text.split() for text in texts]
        tags = [align_entities(words, parse_entity_answer(answer)) for words, answer in zip(sentences, answers)]
        trunk = self._trunk()
        self.classes_ = np.asarray(sorted({O_TAG, *(t for row in tags for t in row)}))
        tag_id = {c: i for i, c in enumerate(self.classes_.tolist())}
        started = time.perf_counter()
        cached = trunk.word_states(sentences, self.max_length)
        self.encode_seconds_ = time.perf_counter() - started
        items = []
        for (ids, states, firsts), row in zip(cached, tags):
            labels = [tag_id[tag] if first >= 0 else IGNORED for tag, first in zip(row, firsts)]
            items.append({"input_ids": ids, "states": states, "word_index": firsts, "labels": labels})
        self._train(trunk, items)
        return self

    # -- answering --------------------------------------------------------------------------
    def word_probas(self, sentences: Sequence[Sequence[str]], batch_size: int = 1) -> list[np.ndarray]:
        """Per sentence, tag probabilities per word, shape (words, len(classes_)); cut-off words get uniform rows.

        One sentence at a time by default: filing sentences run from 3 to 300+ words, and on CPU the padding
        a batch needs costs more than batching saves (fin_ner validation, one thread: 19 ms a sentence alone,
        37 in batches of 8, 63 in batches of 32).
        """
        self._check_fitted()
        trunk = self._trunk()
        torch = trunk.torch
        tagger = self._served_tagger(trunk)  # made here, once, not by the worker threads below
        out: list[np.ndarray] = [np.zeros((0, len(self.classes_)), dtype=np.float32)] * len(sentences)
        order = sorted((i for i in range(len(sentences)) if sentences[i]), key=lambda i: len(sentences[i]), reverse=True)
        # Tokenized in this thread (a fast tokenizer must not be shared between threads), run on the encoder's workers.
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        prepared = [trunk.tokenize_words([sentences[i] for i in chunk], self.max_length) for chunk in chunks]

        def logits_of(item: tuple[Any, list[list[int]]]) -> np.ndarray:
            with torch.inference_mode():
                return tagger(*_tagger_inputs(trunk, *item)).float().numpy()

        run = getattr(self.encoder, "map", None) or (lambda function, items: [function(item) for item in items])
        for chunk, (_, firsts), logits in zip(chunks, prepared, run(logits_of, prepared)):
            for row, i in enumerate(chunk):
                probs = _softmax(logits[row, : len(firsts[row])])
                probs[np.asarray(firsts[row]) < 0] = 1.0 / len(self.classes_)
                out[i] = probs
        return out

    def _served_tagger(self, trunk: _Trunk) -> Any:
        """The served top as (trunk states, attention mask, word index) -> logits; traced where the trace is exact.

        Traced as the tier's encoder is asked to be (``engine.trace``), checked on sentences of two lengths and a
        padded pair (:func:`routenlp_ray.models.tracing.exact_trace`).
        """
        model = self._served_model()
        if getattr(self, "_tagger_of", None) is model:
            return self._tagger
        torch = trunk.torch

        class TagLogits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, states: Any, attention_mask: Any, word_index: Any) -> Any:
                return self.model(states, attention_mask, word_index)["logits"]

        tagger: Any = TagLogits().eval()
        if getattr(self.encoder, "trace", True):
            sentences = [text.split() for text in CHECK_TEXTS]
            checks = [_tagger_inputs(trunk, *trunk.tokenize_words(batch, self.max_length))
                      for batch in ([sentences[0]], [sentences[1]], sentences)]
            tagger = exact_trace(tagger, checks[0], checks, f"{self.kind} top") or tagger
        self._tagger, self._tagger_of = tagger, model
        return tagger

    def answer(self, texts: Sequence[str], top_k: int = 5) -> list[HeadAnswer]:
        sentences = [text.split() for text in texts]
        return [entity_answer(words, probs, self.classes_, top_k)
                for words, probs in zip(sentences, self.word_probas(sentences))]

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [a.text for a in self.answer(texts)]


def _tagger_inputs(trunk: _Trunk, batch: Any, firsts: list[list[int]]) -> tuple[Any, Any, Any]:
    """A tagger top's inputs: trunk states, the attention mask, each word's first sub-token (0 where cut off)."""
    torch = trunk.torch
    word_index = torch.zeros(len(firsts), max(len(f) for f in firsts), dtype=torch.long)
    for row, first in enumerate(firsts):
        word_index[row, : len(first)] = torch.tensor(first, dtype=torch.long).clamp(min=0)
    return trunk.states(batch), batch["attention_mask"], word_index


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def _half() -> Any:
    import torch

    return torch.float16


@lru_cache(maxsize=8)
def _encoder_depth(model_source: str) -> int:
    from routenlp_ray.models.sources import resolve_model_source

    config = json.loads((resolve_model_source(model_source) / "config.json").read_text())
    return int(config["num_hidden_layers"])
