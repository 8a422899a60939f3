"""A real LLM run in-process with Hugging Face transformers, on CPU or GPU."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from routenlp_ray._exceptions import EngineError
from routenlp_ray.config.tiers import TransformersEngineConfig
from routenlp_ray.engines.base import GenerationRequest, GenerationResult, StreamItem, truncate_at_stop
from routenlp_ray.models.sources import resolve_model_source

logger = logging.getLogger("routenlp.engines.transformers")


class TransformersEngine:
    """Loads a model folder or GGUF file and generates with per-token logprobs.

    ``generate_batch`` pads a list of requests into one ``model.generate`` call per sampling
    setting; the tier deployment feeds it concurrent requests through ``serve.batch``.
    """

    def __init__(self, config: TransformersEngineConfig, name: str = "transformers") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        path = resolve_model_source(config.model_source)
        load_kwargs: dict[str, Any] = {}
        if config.gguf_file:
            load_kwargs["gguf_file"] = config.gguf_file
        self._torch = torch
        self._device = "cuda" if config.device == "cuda" or (
            config.device == "auto" and torch.cuda.is_available()
        ) else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **load_kwargs)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, config.dtype), **load_kwargs)
        if config.adapter_path:
            from peft import PeftModel

            # Folding the LoRA weights in keeps serving as fast as the base model.
            adapter = resolve_model_source(config.adapter_path)
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        self.model = model.to(self._device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self._eos_ids = {i for i in eos_ids if i is not None}
        self._lock = threading.Lock()
        self._last_error: BaseException | None = None

    # -- protocol -------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return (await self.generate_batch([request]))[0]

    async def generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return await asyncio.to_thread(self.generate_batch_sync, requests)

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Text as ``model.generate`` makes it (``TextIteratorStreamer``), then the scored result.

        Text that could still turn out to start a stop sequence is held back until it cannot;
        generation stops once a stop sequence appears or the consumer goes away.
        """
        from transformers import AsyncTextIteratorStreamer

        # The streamer hands text to this event loop; reading it must not hold a worker thread. With a
        # blocking reader, each waiting stream held one of asyncio's few default threads (6 on 2 cores)
        # while its generation waited for the model lock, and 8 concurrent streams deadlocked until
        # the tier timed out.
        streamer = AsyncTextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        outcome: list[GenerationResult] = []

        def run() -> None:
            try:
                outcome.extend(self._generate_locked([request], streamer=streamer, cancel=cancel))
            finally:
                streamer.end()  # unblocks the reader below even when generation failed

        worker = asyncio.ensure_future(asyncio.to_thread(run))
        holdback = max((len(s) for s in request.stop if s), default=1) - 1
        text, sent = "", 0
        try:
            async for piece in streamer:
                text += str(piece)
                text, stopped = truncate_at_stop(text, request.stop)
                ready = len(text) if stopped else len(text) - holdback
                if ready > sent:
                    yield text[sent:ready]
                    sent = ready
                if stopped:
                    cancel.set()
                    break
            await worker  # re-raises a generation error
        finally:
            cancel.set()  # also when the consumer left early: the model stops at its next token
        if not outcome:
            raise EngineError(f"tier {self.name!r} produced no result")
        result = outcome[0]
        streamed = text[:sent]
        if result.text.startswith(streamed):
            if len(result.text) > sent:
                yield result.text[sent:]
        else:  # the streamer decoded differently: the client saw ``streamed``, so that is the answer
            logger.warning("tier %s: streamed text differs from the decoded answer", self.name)
            result.text = streamed
        result.metadata["streamed"] = True
        yield result

    def check_health(self) -> None:
        if isinstance(self._last_error, (MemoryError, RuntimeError)) and "out of memory" in str(self._last_error):
            raise EngineError(f"tier {self.name!r} ran out of memory: {self._last_error}")

    # -- generation -----------------------------------------------------------------------
    def generate_batch_sync(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return self._generate_locked(requests)

    def _generate_locked(
        self, requests: list[GenerationRequest], streamer: Any = None, cancel: threading.Event | None = None
    ) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple[float, float], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[request.sampling_key].append(index)
        with self._lock:
            for indices in groups.values():
                group = [requests[i] for i in indices]
                try:
                    for i, result in zip(indices, self._generate_group(group, streamer, cancel)):
                        results[i] = result
                except Exception as exc:
                    self._last_error = exc
                    raise EngineError(f"tier {self.name!r} failed to generate: {exc}") from exc
        return [r for r in results if r is not None]

    def render(self, request: GenerationRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        return self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)

    def _fit_context(self, text: str) -> str:
        """Cut the middle out of an over-long prompt: on CPU, prefill time grows with its square."""
        limit = self.config.max_input_tokens
        if limit is None:
            return text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text
        head, tail = ids[: limit // 2], ids[len(ids) - (limit - limit // 2) :]
        return self.tokenizer.decode(head) + self.tokenizer.decode(tail)

    def _generate_group(
        self, group: list[GenerationRequest], streamer: Any = None, cancel: threading.Event | None = None
    ) -> list[GenerationResult]:
        torch = self._torch
        started = time.perf_counter()
        texts = [self._fit_context(self.render(r)) for r in group]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self._device)
        temperature, top_p = group[0].sampling_key
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        )
        if streamer is not None:
            sampling["streamer"] = streamer
        if cancel is not None:
            from transformers import StoppingCriteria, StoppingCriteriaList

            class _Cancelled(StoppingCriteria):
                def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                    return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

            sampling["stopping_criteria"] = StoppingCriteriaList([_Cancelled()])
        with torch.inference_mode():
            out = self.model.generate(
                **encoded,
                max_new_tokens=max(r.max_tokens for r in group),
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
            generated = out.sequences[:, encoded["input_ids"].shape[1]:]
            # Logprobs under the model's own distribution, not the temperature-scaled one.
            logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
            chosen = logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1).cpu()
            k = self.config.top_logprobs
            top = logprobs.topk(k, dim=-1).values.cpu() if k else None
        elapsed_ms = (time.perf_counter() - started) * 1000
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        results = [
            self._finish_row(
                request,
                generated[row].tolist(),
                chosen[row].tolist(),
                top[row].tolist() if top is not None else None,
                int(prompt_lengths[row]),
                elapsed_ms,
            )
            for row, request in enumerate(group)
        ]
        for result in results:
            result.metadata["batch_size"] = len(group)
        return results

    def _finish_row(
        self,
        request: GenerationRequest,
        ids: list[int],
        logprobs: list[float],
        top: list[list[float]] | None,
        prompt_tokens: int,
        elapsed_ms: float,
    ) -> GenerationResult:
        keep = min(len(ids), request.max_tokens)
        finish_reason = "length"
        for position, token in enumerate(ids[:keep]):
            if token in self._eos_ids:
                keep, finish_reason = position, "stop"
                break
        ids = ids[:keep]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = truncate_at_stop(text, request.stop)
        if stopped:
            finish_reason = "stop"
            keep = self._tokens_covering(ids, len(text))
            ids = ids[:keep]
        return GenerationResult(
            text=text,
            token_logprobs=logprobs[:keep],
            top_logprobs=top[:keep] if top is not None else None,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(ids),
            latency_ms=elapsed_ms,
            finish_reason=finish_reason,
            model=self.name,
        )

    def _tokens_covering(self, ids: list[int], n_chars: int) -> int:
        """The fewest leading tokens whose decoded text reaches ``n_chars`` characters."""
        low, high = 0, len(ids)
        while low < high:
            mid = (low + high) // 2
            if len(self.tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= n_chars:
                high = mid
            else:
                low = mid + 1
        return low
