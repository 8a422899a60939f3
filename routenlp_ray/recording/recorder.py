"""Run every tier of a portfolio over a data split once, and keep what each tier said.

Router training, calibration and the benchmark all read these records, so an algorithm is
evaluated without running the models again. Records are appended (and fsync'ed) a batch at
a time, so an interrupted run resumes where it stopped; a tier whose settings changed since
its records were made is refused instead of being silently mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from routenlp_ray._exceptions import ConfigError, RouteNLPError
from routenlp_ray.config.app import RouteNLPConfig
from routenlp_ray.config.tiers import TierConfig
from routenlp_ray.engines.base import (
    Engine,
    GenerationRequest,
    GenerationResult,
    generate_isolating_failures,
    task_request,
)
from routenlp_ray.tasks.spec import TaskSpec

RECORD_FORMAT_VERSION = 1


class RecordableExample(Protocol):
    id: str
    input: str


class StaleRecordsError(RouteNLPError):
    """Records on disk were made with other tier or task settings."""


# Enough room for each task's expected answer; short answers keep CPU recording affordable.
DEFAULT_RECORD_MAX_TOKENS = {
    "cs_intent": 16,
    "legal_clause": 16,
    "legal_risk": 8,
    "fin_ner": 64,
    "fin_summarization": 96,
    "cs_response": 96,
}


def record_path(root: Path, task: str, split: str, tier: str) -> Path:
    return root / task / split / f"{tier}.jsonl"


def fingerprint(tier: TierConfig, task: TaskSpec, max_tokens: int) -> str:
    """What makes a tier's answers on a task what they are; records from another fingerprint are stale."""
    payload = {
        "format": RECORD_FORMAT_VERSION,
        "engine": _engine_identity(tier),
        "task": {"system_prompt": task.system_prompt, "prompt_template": task.prompt_template},
        "max_tokens": max_tokens,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _engine_identity(tier: TierConfig) -> dict[str, Any]:
    # top_logprobs adds evidence to a record without changing its answer; an unset adapter is
    # the base model, as before adapters existed.
    engine = tier.engine.model_dump(mode="json", exclude={"top_logprobs"})
    if engine.get("adapter_path", "") is None:
        del engine["adapter_path"]
    return engine


class Recorder:
    """Records tier outputs for (task, split) pairs under ``root``.

    ``engines`` maps tier names to engines; by default they are built from the config, one
    per tier, on first use.
    """

    def __init__(
        self,
        config: RouteNLPConfig,
        root: str | os.PathLike[str],
        engines: Mapping[str, Engine] | None = None,
        engine_factory: Callable[[TierConfig], Engine] | None = None,
        batch_size: int = 8,
        max_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config
        self.root = Path(root)
        self.batch_size = batch_size
        self._engines: dict[str, Engine] = dict(engines or {})
        self._engine_factory = engine_factory
        self._max_tokens = dict(max_tokens or {})

    def max_tokens_for(self, task: str) -> int:
        default = min(t.limits.default_max_tokens for t in self.config.tiers)
        return self._max_tokens.get(task, default)

    def engine(self, tier: TierConfig) -> Engine:
        if tier.name not in self._engines:
            if self._engine_factory is None:
                from routenlp_ray.engines.factory import make_engine

                self._engine_factory = make_engine
            self._engines[tier.name] = self._engine_factory(tier)
        return self._engines[tier.name]

    def record(
        self,
        task: str,
        split: str,
        examples: Sequence[RecordableExample],
        tiers: Iterable[str] | None = None,
        progress: bool = True,
    ) -> dict[str, int]:
        """Record every missing (tier, example) pair; returns how many new records each tier got."""
        try:
            task_config = self.config.task(task)
        except KeyError:
            raise ConfigError(f"task {task!r} is not in the config; known: {[t.name for t in self.config.tasks]}") from None
        names = list(tiers) if tiers is not None else [t.name for t in self.config.tiers]
        added: dict[str, int] = {}
        for name in names:
            tier = self.config.tier(name)
            if tier.serves(task):  # a tier that does not serve the task is skipped when serving, too
                added[name] = self._record_tier(tier, task_config, split, examples, progress)
        return added

    def _record_tier(
        self, tier: TierConfig, task: TaskSpec, split: str, examples: Sequence[RecordableExample], progress: bool
    ) -> int:
        max_tokens = self.max_tokens_for(task.name)
        stamp = fingerprint(tier, task, max_tokens)
        path = record_path(self.root, task.name, split, tier.name)
        done = self._recorded_ids(path, stamp)
        pending = [e for e in examples if e.id not in done]
        if not pending:
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        bar = _progress_bar(len(pending), f"{task.name}/{split}/{tier.name}", progress)
        engine = self.engine(tier)
        with path.open("a", encoding="utf-8") as handle:
            for start in range(0, len(pending), self.batch_size):
                chunk = pending[start : start + self.batch_size]
                requests = [self._request(task, example, max_tokens) for example in chunk]
                outputs = generate_isolating_failures(engine, requests)
                for example, output in zip(chunk, outputs):
                    handle.write(json.dumps(self._row(tier, task, split, example, output, stamp), allow_nan=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                bar.update(len(chunk))
        bar.close()
        return len(pending)

    @staticmethod
    def _recorded_ids(path: Path, stamp: str) -> set[str]:
        if not path.exists():
            return set()
        ids: set[str] = set()
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash mid-write; that example is simply recorded again
                if row["fingerprint"] != stamp:
                    raise StaleRecordsError(
                        f"{path} holds records made with other settings (fingerprint {row['fingerprint']}, now "
                        f"{stamp}); move it away or record into another folder"
                    )
                ids.add(row["example_id"])
        return ids

    @staticmethod
    def _request(task: TaskSpec, example: RecordableExample, max_tokens: int) -> GenerationRequest:
        return task_request(task, example.id, example.input, max_tokens)

    @staticmethod
    def _row(
        tier: TierConfig,
        task: TaskSpec,
        split: str,
        example: RecordableExample,
        output: GenerationResult | BaseException,
        stamp: str,
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "example_id": example.id,
            "task": task.name,
            "split": split,
            "tier": tier.name,
            "fingerprint": stamp,
            "recorded_at": time.time(),
        }
        if isinstance(output, BaseException):
            return {**row, "text": None, "token_logprobs": None, "prompt_tokens": 0, "completion_tokens": 0,
                    "cost_usd": 0.0, "latency_ms": 0.0, "finish_reason": None, "usage_estimated": False,
                    "error": f"{type(output).__name__}: {output}"}
        return {
            **row,
            "text": output.text,
            "token_logprobs": output.token_logprobs,
            "top_logprobs": output.top_logprobs,
            "prompt_tokens": output.prompt_tokens,
            "completion_tokens": output.completion_tokens,
            "cost_usd": tier.pricing.cost_usd(output.prompt_tokens, output.completion_tokens),
            "latency_ms": output.latency_ms,
            "finish_reason": output.finish_reason,
            "usage_estimated": output.usage_estimated,
            "error": None,
        }


def _progress_bar(total: int, label: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="ex", disable=not enabled)


def load_records(root: str | os.PathLike[str], task: str, split: str, tiers: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``records[tier][example_id]`` for the given tiers; the last record of an example wins."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for tier in tiers:
        path = record_path(Path(root), task, split, tier)
        rows: dict[str, dict[str, Any]] = {}
        if path.exists():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        rows[row["example_id"]] = row
        out[tier] = rows
    return out
