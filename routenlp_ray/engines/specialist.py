"""The specialist engine: distilled task heads on one shared encoder, answering like any other tier.

Every answer is a :class:`GenerationResult` whose ``token_logprobs`` and ``top_logprobs`` carry
the head's evidence (see :mod:`routenlp_ray.specialists.heads`), so the uncertainty scores,
split-conformal thresholds, coverage monitor and query log treat it as they treat an LLM.
The artifact is verified (manifest, encoder fingerprint, every file's checksum) before any
head is loaded: a bad artifact fails the replica's start, or a live swap, naming the file.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from routenlp_ray._exceptions import EngineError
from routenlp_ray.config.tiers import SpecialistEngineConfig
from routenlp_ray.engines.base import GenerationRequest, GenerationResult, estimate_tokens, lookup_text, request_text
from routenlp_ray.specialists.artifact import verify_artifact
from routenlp_ray.specialists.heads import HeadAnswer, SpecialistEncoder, load_head


class SpecialistEngine:
    """Answers the tasks it holds heads for; any other task raises ``EngineError`` (the cascade escalates)."""

    def __init__(self, config: SpecialistEngineConfig, name: str = "specialist", tasks: list[str] | None = None) -> None:
        self.name = name
        self.config = config
        root = Path(config.path)
        manifest = verify_artifact(root, tasks)
        self.version = manifest.version
        self.encoder = SpecialistEncoder(manifest.encoder.source, num_threads=config.num_threads,
                                         cache_path=config.encoding_cache, trace=config.trace,
                                         workers=config.encode_workers)
        self.heads = {
            task: load_head(root / task, self.encoder, exact_search_max=config.exact_search_max,
                            data_dir=config.data_dir)
            for task in (tasks or sorted(manifest.tasks))
        }
        # One encoder, one forward at a time: concurrent batches would only fight over the cores.
        self._lock = threading.Lock()
        # With encoder workers, the heads that run their own trunk (the fine-tuned fin_ner tagger) are driven
        # from this thread while the calling thread encodes the sentence-vector heads' texts: both feed the
        # same worker pool, which then stays busy to the end of the batch. Only heads with their own tokenizer
        # go there (a fast tokenizer, and the encoding cache's SQLite connection, must stay on one thread).
        # Without workers there is no pool to share, and a second driving thread would use a core the config
        # did not give.
        self._side = ThreadPoolExecutor(1, thread_name_prefix="specialist-heads") if config.encode_workers > 1 else None

    @property
    def tasks(self) -> list[str]:
        return sorted(self.heads)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return (await self.generate_batch([request]))[0]

    async def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return await asyncio.to_thread(self._answer_batch, requests)

    def _answer_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        started = time.perf_counter()
        unknown = sorted({str(r.task) for r in requests if r.task not in self.heads})
        if unknown:
            raise EngineError(f"tier {self.name!r} has no specialist head for tasks {unknown}; it serves {self.tasks}")
        by_task: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            by_task[str(request.task)].append(index)
        texts = [lookup_text(r) for r in requests]
        top_k = self.config.top_logprobs
        answers: dict[int, HeadAnswer] = {}
        with self._lock:
            # Every head that reads sentence vectors gets them from one encode call over the whole batch:
            # the encoder's workers then share one long queue instead of a short one per task, whose tail
            # leaves a worker idle (a batch of 64 over five tasks is ~13 texts a task).
            vector_tasks = [task for task in by_task if getattr(self.heads[task], "reads_sentence_vectors", False)]
            side_tasks = [task for task in by_task if task not in vector_tasks
                          and getattr(self.heads[task], "owns_tokenizer", False)]
            other_tasks = [task for task in by_task if task not in vector_tasks and task not in side_tasks]

            def answer_each(tasks: list[str]) -> list[tuple[str, list[HeadAnswer]]]:
                return [(task, self.heads[task].answer([texts[i] for i in by_task[task]], top_k=top_k))
                        for task in tasks]

            beside = (self._side.submit(answer_each, side_tasks)
                      if self._side is not None and side_tasks and vector_tasks else None)
            shared = [i for task in vector_tasks for i in by_task[task]]
            vectors = dict(zip(shared, self.encoder.encode([texts[i] for i in shared]))) if shared else {}
            for task in vector_tasks:
                indices = by_task[task]
                answers.update(zip(indices, self.heads[task].answer_from_vectors(
                    np.stack([vectors[i] for i in indices]), top_k, [texts[i] for i in indices])))
            done = beside.result() if beside is not None else answer_each(side_tasks)
            for task, task_answers in done + answer_each(other_tasks):
                answers.update(zip(by_task[task], task_answers))
        latency_ms = (time.perf_counter() - started) * 1000
        return [
            GenerationResult(
                text=answers[i].text,
                token_logprobs=answers[i].token_logprobs,
                top_logprobs=answers[i].top_logprobs,
                prompt_tokens=estimate_tokens(request_text(request)),
                completion_tokens=estimate_tokens(answers[i].text),
                latency_ms=latency_ms,
                model=f"{self.name}@{self.version}",
                usage_estimated=True,
                metadata={"head": self.heads[str(request.task)].kind, "artifact_version": self.version},
            )
            for i, request in enumerate(requests)
        ]

    def check_health(self) -> None:
        return None
