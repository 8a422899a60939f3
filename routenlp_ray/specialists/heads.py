"""Distilled specialist heads, scikit-learn style: ``fit(texts, answers)``, ``predict``, ``save`` / ``load``.

Each head learns one task from (query, frontier answer) pairs on top of the packaged MiniLM
encoder, and answers with the evidence the cascade scores (:class:`HeadAnswer`):

- :class:`LabelSpecialist`: a multinomial logistic regression on the sentence vector. Its
  classes are the frontier's answers, verbatim.
  Evidence: the chosen class's log-probability, and the top-k class log-probabilities.
- :class:`EntitySpecialist`: a BIO tagger (logistic regression on each word's contextual state). The frontier's JSON
  entity lists are aligned back onto the words to make the tags. Evidence: each word's
  log-probability of its predicted tag, so ``max_nll`` is the least sure word of the sentence.
- :class:`AnswerCache`: the frontier's answer to the most similar past query. Evidence: the
  log of that cosine similarity, so ``mean_nll`` is ``-log(similarity)``, monotone in it.

All heads share one frozen encoder (:class:`SpecialistEncoder`), so a query is encoded once
whatever the task, and a head is a few hundred KB of weights, not an encoder copy. A label task
can instead fine-tune the encoder's top layers over a shared frozen trunk
(:class:`~routenlp_ray.specialists.finetuned.FineTunedLabelSpecialist`, kind ``finetuned_label``,
chosen per task in :class:`~routenlp_ray.specialists.training.SpecialistTrainingConfig`). An
earlier LoRA attempt that reached 12% on cs_intent after one epoch was mis-tuned: one short
epoch with a linear decay, a randomly initialised 77-way classifier at the adapters' learning rate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from routenlp_ray._exceptions import ArtifactError, MissingExtraError, NotFittedError
from routenlp_ray.models.encoder import MINILM_SOURCE, SentenceEncoder
from routenlp_ray.models.encoding_cache import EncodingCache
from routenlp_ray.specialists._answer import HeadAnswer
from routenlp_ray.specialists.artifact import HEAD_FILE, data_fingerprint, read_head
from routenlp_ray.specialists.bio import O_TAG, align_entities, entity_answer, parse_entity_answer
from routenlp_ray.specialists.finetuned import FineTunedEntitySpecialist, FineTunedLabelSpecialist
from routenlp_ray.specialists.lexical import LexicalFeatures

__all__ = [
    "HEADS",
    "AnswerCache",
    "EntitySpecialist",
    "HeadAnswer",
    "LabelSpecialist",
    "SpecialistEncoder",
    "align_entities",
    "entity_answer",
    "load_head",
    "make_head",
    "parse_entity_answer",
]

class SpecialistEncoder(SentenceEncoder):
    """The one frozen encoder every head of a specialist tier shares: a query is encoded once.

    Sentence vectors come from :class:`SentenceEncoder` (int8, one text at a time, so training
    and serving see identical vectors). ``word_features`` gives each whitespace word its first
    sub-token's contextual state, next to the previous word's, for the entity tagger.
    """

    def __init__(self, model_source: str = MINILM_SOURCE, *args: Any, cache_path: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model_source, *args, **kwargs)
        self.cache: EncodingCache | None = None
        if cache_path is not None:
            identity = json.dumps([model_source, self.quantize, self.max_length])
            self.cache = EncodingCache(cache_path, identity)

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """As :meth:`SentenceEncoder.encode`; with a cache, only texts it has never seen are encoded."""
        if self.cache is None or batch_size not in (None, 1):
            return super().encode(texts, batch_size)
        texts = list(texts)
        found = self.cache.get_many("sentence", texts)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            fresh = super().encode(missing)
            self.cache.put_many("sentence", zip(missing, fresh))
            found.update(zip(missing, fresh))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[t] for t in texts])

    def word_features(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features of shape (words, 2 * dim), a mask of the words that fit in ``max_length``)."""
        if self.cache is None or not words:
            return self._word_features(words)
        key = json.dumps(list(words), ensure_ascii=False)
        found = self.cache.get_many("words", [key]).get(key)
        if found is not None:  # the fit mask rides along as the last column
            return found[:, :-1].copy(), found[:, -1] > 0.5
        features, fits = self._word_features(words)
        self.cache.put_many("words", [(key, np.hstack([features, fits[:, None].astype(np.float32)]))])
        return features, fits

    def _word_features(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        dim = self.dim
        features = np.zeros((len(words), 2 * dim), dtype=np.float32)
        if not words:
            return features, np.zeros(0, dtype=bool)
        encoded = self.tokenizer(
            list(words), is_split_into_words=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            states = self.states(encoded)[0].numpy()
        seen = np.zeros(len(words), dtype=bool)
        for position, word in enumerate(encoded.word_ids()):
            if word is not None and not seen[word]:
                features[word, :dim], seen[word] = states[position], True
        features[1:, dim:] = features[:-1, :dim]
        return features, seen


class _LinearHead:
    """A multinomial logistic regression on frozen encoder features; ``C`` is picked on a held-out slice."""

    kind: ClassVar[str]

    def __init__(
        self,
        encoder: SpecialistEncoder,
        *,
        Cs: Sequence[float] = (1.0, 10.0, 100.0),
        holdout: float = 0.1,
        max_iter: int = 2000,
        seed: int = 0,
    ) -> None:
        self.encoder = encoder
        self.Cs = tuple(Cs)
        self.holdout = holdout
        self.max_iter = max_iter
        self.seed = seed

    def _fit_features(self, X: np.ndarray, y: Sequence[str], groups: np.ndarray) -> None:
        """Pick C on a held-out slice of ``groups`` (whole examples), then refit on everything."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y)
        rng = np.random.default_rng(self.seed)
        examples = np.unique(groups)
        held = set(rng.choice(examples, size=max(1, int(len(examples) * self.holdout)), replace=False).tolist())
        is_held = np.array([g in held for g in groups])
        self.holdout_scores_: dict[float, float] = {}
        if len(self.Cs) > 1 and is_held.any() and (~is_held).any() and len(set(y[~is_held])) > 1:
            for C in self.Cs:
                model = LogisticRegression(C=C, max_iter=self.max_iter).fit(X[~is_held], y[~is_held])
                self.holdout_scores_[C] = self._holdout_score(model, X[is_held], y[is_held], groups[is_held])
            self.C_ = max(self.holdout_scores_, key=lambda c: (self.holdout_scores_[c], -c))
        else:
            self.C_ = self.Cs[0]
        if len(set(y)) == 1:
            self.classes_ = np.asarray(sorted(set(y)))
            self.coef_ = np.zeros((1, X.shape[1]), dtype=np.float32)
            self.intercept_ = np.zeros(1, dtype=np.float32)
            return
        model = LogisticRegression(C=self.C_, max_iter=self.max_iter).fit(X, y)
        self.classes_ = model.classes_
        self.coef_, self.intercept_ = model.coef_.astype(np.float32), model.intercept_.astype(np.float32)

    def _holdout_score(self, model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
        return float(np.mean(model.predict(X) == y))

    def _load_extra(self, folder: Path) -> None:
        """Load what a head keeps beside its weights (nothing, by default)."""

    def _extra_width(self) -> int:
        """Feature columns beyond the encoder's (none, by default)."""
        return 0

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit or load first")

    def _proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (len(X), len(classes_))."""
        self._check_fitted()
        if len(self.classes_) == 1:
            return np.ones((X.shape[0], 1), dtype=np.float32)
        logits = X @ self.coef_.T + self.intercept_
        if logits.shape[1] == 1:  # scikit-learn's binary form: one logit for classes_[1]
            logits = np.hstack([np.zeros_like(logits), logits])
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the head's weights (``head.npz``) and settings (``head.json``); the encoder is not copied."""
        self._check_fitted()
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        np.savez(target / "head.npz", coef=self.coef_, intercept=self.intercept_)
        settings = {
            "kind": self.kind,
            "encoder_source": self.encoder.model_source,
            "classes": [str(c) for c in self.classes_],
            "C": self.C_,
            "holdout_scores": {str(k): v for k, v in self.holdout_scores_.items()},
        }
        (target / HEAD_FILE).write_text(json.dumps(settings, indent=2, ensure_ascii=False))
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike[str], encoder: SpecialistEncoder) -> Any:
        source = Path(folder)
        head = read_head(source)
        if head.get("kind") != cls.kind:
            raise ArtifactError(f"{str(source / HEAD_FILE)!r} holds a {head.get('kind')!r} head, not a {cls.kind!r} one")
        self = cls(encoder)
        try:
            with np.load(source / "head.npz") as weights:
                self.coef_, self.intercept_ = weights["coef"].astype(np.float32), weights["intercept"].astype(np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"specialist head {str(source / 'head.npz')!r} cannot be loaded: {exc}") from None
        self.classes_ = np.asarray(head["classes"])
        self.C_ = float(head["C"])
        self.holdout_scores_ = {float(k): v for k, v in head.get("holdout_scores", {}).items()}
        self._load_extra(source)
        expected = (
            len(self.classes_) if len(self.classes_) > 2 else 1,
            encoder.dim * cls._feature_width + self._extra_width(),
        )
        if self.coef_.shape != expected and len(self.classes_) > 1:
            raise ArtifactError(
                f"specialist head {str(source / 'head.npz')!r} has weights of shape {self.coef_.shape}; "
                f"{len(self.classes_)} classes on this encoder need {expected}"
            )
        return self


class LabelSpecialist(_LinearHead):
    """A classifier whose classes are the frontier's label answers, verbatim.

    Its features are the encoder's sentence vector and, unless ``lexical_features`` is 0, the
    query's word n-gram TF-IDF (:class:`~routenlp_ray.specialists.lexical.LexicalFeatures`,
    at most that many columns).
    """

    kind = "label"
    _feature_width = 1
    #: Answers from the shared encoder's sentence vectors (``answer_from_vectors``): an engine may
    #: encode a whole mixed batch's texts in one call and hand each head its rows.
    reads_sentence_vectors = True

    def __init__(
        self,
        encoder: SpecialistEncoder,
        *,
        Cs: Sequence[float] = (1.0, 10.0, 100.0),
        holdout: float = 0.1,
        max_iter: int = 2000,
        seed: int = 0,
        lexical_features: int = 0,
    ) -> None:
        super().__init__(encoder, Cs=Cs, holdout=holdout, max_iter=max_iter, seed=seed)
        self.lexical_features = lexical_features

    def _features(self, texts: Sequence[str], vectors: np.ndarray) -> Any:
        lexical = getattr(self, "lexical_", None)
        if lexical is None:
            return vectors
        from scipy import sparse

        return sparse.hstack([sparse.csr_matrix(vectors), lexical.transform(texts)], format="csr")

    def _load_extra(self, folder: Path) -> None:
        self.lexical_ = LexicalFeatures.load(folder)

    def _extra_width(self) -> int:
        lexical = getattr(self, "lexical_", None)
        return 0 if lexical is None else lexical.n_features_

    def fit(self, texts: Sequence[str], answers: Sequence[str]) -> "LabelSpecialist":
        _check_pairs(texts, answers)
        texts = list(texts)
        self.lexical_ = LexicalFeatures(self.lexical_features).fit(texts) if self.lexical_features else None
        X = self._features(texts, self.encoder.encode(texts))
        self._fit_features(X, [a.strip() for a in answers], np.arange(len(texts)))
        return self

    def save(self, folder: str | os.PathLike[str]) -> Path:
        target = super().save(folder)
        if getattr(self, "lexical_", None) is not None:
            self.lexical_.save(target)
        return target

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(classes_))."""
        texts = list(texts)
        return self._proba(self._features(texts, self.encoder.encode(texts)))

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [str(self.classes_[i]) for i in self.predict_proba(texts).argmax(axis=1)]

    def answer_from_vectors(
        self, vectors: np.ndarray, top_k: int = 5, texts: Sequence[str] | None = None
    ) -> list[HeadAnswer]:
        """Answers from already-encoded sentence vectors; ``texts`` too when the head has lexical features."""
        if getattr(self, "lexical_", None) is not None:
            if texts is None or len(texts) != len(vectors):
                raise ValueError("this label head uses lexical features: pass the texts with their vectors")
            features = self._features(list(texts), vectors)
        else:
            features = vectors
        answers = []
        for row in self._proba(features):
            logp = np.log(np.clip(row, 1e-12, 1.0))
            best = int(row.argmax())
            top = np.sort(logp)[::-1][:top_k]
            answers.append(HeadAnswer(str(self.classes_[best]), [float(logp[best])], [[float(x) for x in top]]))
        return answers

    def answer(self, texts: Sequence[str], top_k: int = 5) -> list[HeadAnswer]:
        texts = list(texts)
        return self.answer_from_vectors(self.encoder.encode(texts), top_k, texts)


def _check_pairs(texts: Sequence[str], answers: Sequence[str]) -> None:
    if len(texts) != len(answers) or not texts:
        raise ValueError(f"fit needs as many answers as texts, at least one (got {len(texts)} and {len(answers)})")


class EntitySpecialist(_LinearHead):
    """A BIO tagger over whitespace words; answers the task's JSON entity list."""

    kind = "entities"
    _feature_width = 2

    def fit(self, texts: Sequence[str], answers: Sequence[str]) -> "EntitySpecialist":
        _check_pairs(texts, answers)
        features, tags, groups = [], [], []
        for number, (text, answer) in enumerate(zip(texts, answers)):
            words = text.split()
            features.append(self.encoder.word_features(words)[0])
            tags.extend(align_entities(words, parse_entity_answer(answer)))
            groups.extend([number] * len(words))
        self._fit_features(np.vstack(features), tags, np.asarray(groups))
        return self

    def _holdout_score(self, model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
        # A sentence is right only if every word's tag is: what entity F1 per example rewards.
        right = model.predict(X) == y
        return float(np.mean([right[groups == g].all() for g in np.unique(groups)]))

    def word_proba(self, words: Sequence[str]) -> np.ndarray:
        """Tag probabilities per word, shape (len(words), len(classes_)); truncated words get uniform rows."""
        features, fits = self.encoder.word_features(words)
        probs = self._proba(features)
        # A word cut off by max_length has no state: the head cannot be sure of it.
        probs[~fits] = 1.0 / probs.shape[1]
        return probs

    def answer(self, texts: Sequence[str], top_k: int = 5) -> list[HeadAnswer]:
        return [entity_answer(words, self.word_proba(words) if words else None, self.classes_, top_k)
                for words in (text.split() for text in texts)]

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [a.text for a in self.answer(texts)]


class AnswerCache:
    """The frontier's logged answer to the most similar past query (a semantic cache).

    Search is exact (one matrix product) up to ``exact_search_max`` entries, which serves in
    well under 5 ms on a 2-core CPU; past that a usearch HNSW index is built at load time.
    """

    kind = "cache"
    reads_sentence_vectors = True

    def __init__(self, encoder: SpecialistEncoder, *, exact_search_max: int = 50_000) -> None:
        self.encoder = encoder
        self.exact_search_max = exact_search_max

    def fit(self, texts: Sequence[str], answers: Sequence[str]) -> "AnswerCache":
        _check_pairs(texts, answers)
        self.vectors_ = self.encoder.encode(list(texts)).astype(np.float32)
        self.texts_ = list(texts)
        self.answers_ = list(answers)
        self._build_index()
        return self

    def _build_index(self) -> None:
        self.index_ = None
        if len(self.answers_) > self.exact_search_max:
            try:
                from usearch.index import Index
            except ImportError as exc:
                raise MissingExtraError(
                    f"an answer cache of {len(self.answers_)} entries (over exact_search_max={self.exact_search_max}) "
                    "needs usearch: pip install usearch"
                ) from exc
            index = Index(ndim=self.vectors_.shape[1], metric="ip", dtype="f32")
            index.add(np.arange(len(self.answers_)), self.vectors_)
            self.index_ = index

    def _check_fitted(self) -> None:
        if not hasattr(self, "vectors_"):
            raise NotFittedError("this AnswerCache is not fitted yet; call fit or load first")

    def search_vectors(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, entry indices), each of shape (len(queries), k), most similar first."""
        self._check_fitted()
        k = min(k, len(self.answers_))
        if self.index_ is not None:
            found = self.index_.search(queries, k)
            keys = np.asarray(found.keys).reshape(len(queries), k).astype(int)
            sims = np.einsum("nd,nkd->nk", queries, self.vectors_[keys])
            return sims, keys
        scores = queries @ self.vectors_.T
        keys = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, keys, axis=1), keys

    def answer_from_vectors(self, vectors: np.ndarray, top_k: int = 5,
                            texts: Sequence[str] | None = None) -> list[HeadAnswer]:
        """Answers from already-encoded sentence vectors (``texts`` is accepted, as label heads take it, and unused)."""
        similarities, keys = self.search_vectors(vectors, k=top_k)
        answers = []
        for sims, ids in zip(similarities, keys):
            logs = [math.log(min(max(float(s), 1e-6), 1.0)) for s in sims]
            answers.append(HeadAnswer(self.answers_[int(ids[0])], logs[:1], [logs]))
        return answers

    def answer(self, texts: Sequence[str], top_k: int = 5) -> list[HeadAnswer]:
        return self.answer_from_vectors(self.encoder.encode(list(texts)), top_k)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [a.text for a in self.answer(texts, top_k=1)]

    def save(self, folder: str | os.PathLike[str], source: dict[str, str] | None = None) -> Path:
        """Write the cache; with ``source``, only a reference to the JSONL rows it was built from.

        ``source`` is ``{"path": <file relative to a data folder>, "input_field": ..., "answer_field": ...}``.
        A cache over rows that already live elsewhere (a data set, the query log's export) then
        carries no copy of them: ``load`` reads the rows from ``data_dir``, checks they are the
        ones it was built from, and encodes the queries again.
        """
        self._check_fitted()
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        settings: dict[str, Any] = {"kind": self.kind, "encoder_source": self.encoder.model_source,
                                    "entries": len(self.answers_)}
        if source is not None:
            settings["source"] = {**source, "fingerprint": self.fingerprint_}
        else:
            # float16 halves the artifact; cosine rankings move by about 1e-3 at most.
            np.save(target / "vectors.npy", self.vectors_.astype(np.float16))
            with (target / "answers.jsonl").open("w") as handle:
                for answer in self.answers_:
                    handle.write(json.dumps(answer, ensure_ascii=False) + "\n")
        (target / HEAD_FILE).write_text(json.dumps(settings, indent=2))
        return target

    @property
    def fingerprint_(self) -> str:
        return data_fingerprint(self.texts_, self.answers_)

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], encoder: SpecialistEncoder, exact_search_max: int = 50_000,
        data_dir: str | os.PathLike[str] | None = None,
    ) -> "AnswerCache":
        source = Path(folder)
        head = read_head(source)
        if head.get("kind") != cls.kind:
            raise ArtifactError(f"{str(source / HEAD_FILE)!r} holds a {head.get('kind')!r} head, not a cache")
        self = cls(encoder, exact_search_max=exact_search_max)
        if "source" in head:
            return self._load_from_rows(head["source"], source / HEAD_FILE, data_dir)
        try:
            self.vectors_ = np.load(source / "vectors.npy").astype(np.float32)
            self.answers_ = [json.loads(line) for line in (source / "answers.jsonl").read_text().splitlines()]
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"answer cache {str(source)!r} cannot be loaded: {exc}") from None
        if len(self.answers_) != len(self.vectors_) or self.vectors_.shape[1:] != (encoder.dim,):
            raise ArtifactError(
                f"answer cache {str(source)!r}: {len(self.vectors_)} vectors of shape {self.vectors_.shape[1:]} "
                f"for {len(self.answers_)} answers on a {encoder.dim}-dim encoder"
            )
        self._build_index()
        return self

    def _load_from_rows(self, ref: dict[str, str], head_file: Path, data_dir: str | os.PathLike[str] | None) -> "AnswerCache":
        if data_dir is None:
            raise ArtifactError(f"answer cache {str(head_file)!r} reads its rows from {ref['path']!r}: set the "
                                "specialist engine's data_dir")
        rows_file = Path(data_dir) / ref["path"]
        if not rows_file.is_file():
            raise ArtifactError(f"answer cache {str(head_file)!r}: its rows {str(rows_file)!r} do not exist")
        texts, answers = source_pairs(ref, data_dir)
        if data_fingerprint(texts, answers) != ref["fingerprint"]:
            raise ArtifactError(f"answer cache {str(head_file)!r}: {str(rows_file)!r} is not the data it was built from")
        return self.fit(texts, answers)


def source_pairs(ref: dict[str, str], data_dir: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """The (query, answer) pairs of the data rows a cache built by reference points at."""
    from routenlp_ray._jsonl import iter_jsonl
    from routenlp_ray.tasks.data import answer_text

    rows = [row for _, row in iter_jsonl(Path(data_dir) / ref["path"])]
    return [str(r[ref["input_field"]]) for r in rows], [answer_text(r[ref["answer_field"]]) for r in rows]


HEADS: dict[str, Any] = {"label": LabelSpecialist, "entities": EntitySpecialist, "cache": AnswerCache,
                         "finetuned_label": FineTunedLabelSpecialist, "finetuned_entities": FineTunedEntitySpecialist}


def make_head(kind: str, encoder: SpecialistEncoder, **params: Any) -> Any:
    if kind not in HEADS:
        raise ValueError(f"unknown specialist head kind {kind!r}; known: {sorted(HEADS)}")
    return HEADS[kind](encoder, **params)


def load_head(
    folder: str | os.PathLike[str], encoder: SpecialistEncoder, exact_search_max: int = 50_000,
    data_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Load whichever head ``folder/head.json`` declares, on the shared ``encoder``."""
    kind = read_head(Path(folder)).get("kind")
    if kind not in HEADS:
        raise ArtifactError(f"{str(Path(folder) / HEAD_FILE)!r} declares unknown head kind {kind!r}")
    if kind == "cache":
        return AnswerCache.load(folder, encoder, exact_search_max=exact_search_max, data_dir=data_dir)
    return HEADS[kind].load(folder, encoder)
