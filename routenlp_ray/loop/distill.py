"""Targeted knowledge distillation: fit a LoRA adapter on frontier answers with Ray Train.

The student is a tier's :class:`TransformersEngineConfig` model (the cheap tier's SmolLM2
GGUF by default). Each :class:`DistillExample` holds the chat messages exactly as the engine
receives them (task system prompt and template already applied, see
:meth:`DistillExample.for_task`) and the teacher's answer. The loss covers only the answer
tokens and the EOS token that ends them; the prompt is rendered by the tokenizer's chat
template with the generation prompt, as the engine renders it when serving.

:func:`train_lora_adapter` runs a :class:`ray.train.torch.TorchTrainer`. It checkpoints the
adapter, the optimizer state and the loss history every ``checkpoint_every`` steps. Calling it
again with the same ``storage_path`` and ``run_name`` resumes from the run's latest checkpoint
(Ray Train V2 restores a run by its name and storage path). Within one call, a worker failure
restarts the workers from that checkpoint, up to ``max_failures`` times.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator, model_validator

from routenlp_ray._exceptions import ConfigError, RouteNLPError
from routenlp_ray.config._base import StrictModel
from routenlp_ray.config.tiers import TransformersEngineConfig
from routenlp_ray.loop.adapters import (
    ADAPTER_CONFIG_FILE,
    adapter_files,
    load_base_model,
    load_tokenizer,
    render_prompt,
)
from routenlp_ray.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DistillConfig",
    "DistillExample",
    "DistillResult",
    "EncodedExample",
    "answer_logprob",
    "encode_example",
    "train_lora_adapter",
]

IGNORE_INDEX = -100
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
METADATA_FILE = "distill.json"
BEST_ADAPTER_DIR = "best_adapter"
# Batches per window of a shuffled epoch inside which examples are sorted by length.
LENGTH_WINDOW_BATCHES = 16
# LoRA settings that must match between a checkpoint and the run resuming from it.
_LORA_SHAPE_FIELDS = ("r", "alpha", "target_modules")


class DistillConfig(StrictModel):
    """LoRA distillation hyper-parameters and the Ray Train layout that runs them."""

    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Module names wrapped with LoRA; the default is the attention projections of Llama-style models.",
    )
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate (constant).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient-norm clip; None does not clip.")
    max_steps: int = Field(100, ge=1, description="Optimizer steps the run ends at (counted across resumes).")
    batch_size: int = Field(8, ge=1, description="Examples per step on each worker.")
    max_seq_len: int = Field(
        512, ge=16, description="Longest prompt + answer in tokens; longer examples lose the middle of the prompt."
    )
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints; the last step always checkpoints.")
    checkpoints_to_keep: int = Field(2, ge=1, description="Most recent checkpoints kept in the run's storage.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers; more than one trains data-parallel (DDP).")
    use_gpu: bool = Field(False, description="Give each worker a GPU.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker; also its torch thread count.")
    max_failures: int = Field(0, ge=0, description="Worker-group restarts (from the last checkpoint) within one call.")
    seed: int = Field(0, description="Seed for LoRA initialisation, dropout and the example order.")
    eval_every: int | None = Field(
        None,
        ge=1,
        description="Steps between held-out evaluations (mean answer-token loss on the eval examples); "
        "None evaluates nothing and the final step's adapter is the result.",
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without a new best held-out loss; None trains to max_steps. "
        "Either way the result is the adapter of the best evaluation.",
    )
    eval_batch_size: int = Field(8, ge=1, description="Examples per forward pass when evaluating.")
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together (within windows of a seeded shuffle)."
    )

    @model_validator(mode="after")
    def _patience_needs_evaluations(self) -> DistillConfig:
        if self.patience is not None and self.eval_every is None:
            raise ValueError(f"patience ({self.patience}) needs eval_every, which is None")
        return self

    @field_validator("target_modules")
    @classmethod
    def _named_modules(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError(f"target_modules must be non-empty module names, got {value!r}")
        return value


class DistillExample(StrictModel):
    """One training pair: the chat messages the tier is sent and the teacher's answer."""

    messages: list[dict[str, str]] = Field(
        min_length=1, description="Chat messages as the engine receives them (task prompt already applied)."
    )
    answer: str = Field(min_length=1, description="The teacher's answer the student learns to give.")

    @field_validator("messages")
    @classmethod
    def _chat_messages(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        for message in value:
            if set(message) != {"role", "content"} or message["role"] not in {"system", "user", "assistant"}:
                raise ValueError(
                    f"each message needs exactly a system/user/assistant role and content, got {message!r}"
                )
        if value[-1]["role"] != "user":
            raise ValueError(f"the last message must be the user's, got role {value[-1]['role']!r}")
        return value

    @classmethod
    def for_task(cls, task: TaskSpec, text: str, answer: str) -> DistillExample:
        """The example the engine would see for ``text`` sent to ``task`` (system prompt and template applied)."""
        return cls(messages=task.apply_to_messages([{"role": "user", "content": text}]), answer=answer)


class EncodedExample(BaseModel):
    """Token ids of one example; ``labels`` is ``IGNORE_INDEX`` over the prompt."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class DistillResult(BaseModel):
    """What a distillation run produced."""

    adapter_dir: str = Field(description="Folder holding the final adapter (adapter_config.json + weights).")
    checkpoint_path: str = Field(description="The run's final checkpoint in Ray Train storage.")
    run_path: str = Field(description="The run's folder in Ray Train storage.")
    losses: list[float] = Field(description="Mean answer-token loss of every step, from step 1 (across resumes).")
    start_step: int = Field(description="Step this call resumed from; 0 for a fresh run.")
    steps: int = Field(description="Steps completed in total.")
    train_seconds: float = Field(description="Seconds the workers spent in training steps in this call.")
    wall_seconds: float = Field(
        description="Seconds the whole call took, Ray Train start-up and model loading included."
    )
    n_examples: int = Field(description="Training examples.")
    n_answer_tokens: int = Field(description="Answer tokens (the loss targets) over all examples.")
    n_truncated: int = Field(description="Examples cut to max_seq_len.")
    evaluations: list[tuple[int, float]] = Field(
        default_factory=list, description="(step, mean held-out answer-token loss) of every evaluation, step 0 first."
    )
    best_step: int | None = Field(None, description="Step whose adapter was kept (the lowest held-out loss).")
    stopped_early: bool = Field(False, description="Training stopped before max_steps: held-out loss stopped improving.")
    init_adapter: str | None = Field(None, description="The adapter training continued from; None started a new one.")

    @property
    def resumed(self) -> bool:
        return self.start_step > 0


# -- encoding -------------------------------------------------------------------------------
def _cut_middle(ids: list[int], limit: int) -> list[int]:
    if len(ids) <= limit:
        return ids
    return ids[: limit // 2] + ids[len(ids) - (limit - limit // 2) :]


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    example: DistillExample,
    max_seq_len: int,
    max_input_tokens: int | None = None,
) -> EncodedExample:
    """Prompt ids as the engine builds them, then the answer ids and EOS as the only loss targets.

    ``max_input_tokens`` is the engine's own prompt limit (its middle is cut, as the engine
    does). An example still longer than ``max_seq_len`` keeps at least half of it for the
    answer and loses the middle of the prompt.
    """
    prompt = tokenizer(render_prompt(tokenizer, example.messages), add_special_tokens=False)["input_ids"]
    if max_input_tokens is not None:
        prompt = _cut_middle(prompt, max_input_tokens)
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    truncated = len(prompt) + len(answer) > max_seq_len
    if truncated:
        answer = answer[: max_seq_len - min(len(prompt), max_seq_len // 2)]
        prompt = _cut_middle(prompt, max_seq_len - len(answer))
    return EncodedExample(input_ids=prompt + answer, labels=[IGNORE_INDEX] * len(prompt) + answer, truncated=truncated)


def _collate(batch: list[EncodedExample], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    pad = [width - len(e.input_ids) for e in batch]
    return {
        "input_ids": torch.tensor([e.input_ids + [pad_id] * p for e, p in zip(batch, pad)]),
        "attention_mask": torch.tensor([[1] * len(e.input_ids) + [0] * p for e, p in zip(batch, pad)]),
        "labels": torch.tensor([e.labels + [IGNORE_INDEX] * p for e, p in zip(batch, pad)]),
    }


def answer_logprob(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    example: DistillExample,
    max_seq_len: int = 4096,
) -> float:
    """Summed log-probability of the example's answer and EOS given its prompt (teacher forcing)."""
    import torch

    encoded = encode_example(tokenizer, example, max_seq_len)
    ids = torch.tensor([encoded.input_ids], device=model.device)
    labels = torch.tensor(encoded.labels[1:], device=model.device)
    with torch.inference_mode():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    mask = labels != IGNORE_INDEX
    return float(logprobs[mask].gather(-1, labels[mask].unsqueeze(-1)).sum())


# -- the Ray Train worker -------------------------------------------------------------------
def _epoch_order(n: int, seed: int, epoch: int, lengths: list[int] | None, window: int) -> list[int]:
    """A seeded permutation of ``n`` examples; with ``lengths``, each window of it is sorted longest first.

    Sorting within windows of a shuffle (as transformers' ``group_by_length`` does) keeps the
    order random across windows while the examples sharing a batch have similar lengths, so a
    CPU spends little on padding.
    """
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    if lengths is None:
        return order
    return [i for start in range(0, n, window) for i in sorted(order[start : start + window], key=lambda j: -lengths[j])]


def _batch_indices(
    step: int, rank: int, batch_size: int, world_size: int, n: int, seed: int, lengths: list[int] | None = None
) -> list[int]:
    """This worker's examples for ``step``: epochs walk seeded permutations, so a resumed run sees the same order."""
    start = step * batch_size * world_size + rank * batch_size
    indices: list[int] = []
    order, epoch = None, -1
    for position in range(start, start + batch_size):
        if position // n != epoch:
            epoch = position // n
            order = _epoch_order(n, seed, epoch, lengths, LENGTH_WINDOW_BATCHES * batch_size * world_size)
        indices.append(order[position % n])
    return indices


def held_out_loss(model: Any, batches: list[dict[str, Any]], device: Any) -> float:
    """Mean answer-token loss (nats per token) of ``model`` over collated ``batches``, in eval mode."""
    import torch

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits[:, :-1]
            labels = batch["labels"][:, 1:].to(device)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                    ignore_index=IGNORE_INDEX, reduction="sum",
                )
            )
            count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(count, 1)


def _lora_config(config: DistillConfig) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type=TaskType.CAUSAL_LM,
    )


def _train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import ray.train.torch
    import torch
    from peft import PeftModel, get_peft_model

    base = TransformersEngineConfig.model_validate(loop_config["base"])
    config = DistillConfig.model_validate(loop_config["distill"])
    examples = [DistillExample.model_validate(e) for e in loop_config["examples"]]
    eval_examples = [DistillExample.model_validate(e) for e in loop_config.get("eval_examples") or []]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.cpus_per_worker)))
    torch.manual_seed(config.seed + rank)

    tokenizer = load_tokenizer(base)
    encoded = [encode_example(tokenizer, e, config.max_seq_len, base.max_input_tokens) for e in examples]
    eval_encoded = [encode_example(tokenizer, e, config.max_seq_len, base.max_input_tokens) for e in eval_examples]
    eval_batches = [
        _collate(eval_encoded[i : i + config.eval_batch_size], tokenizer.pad_token_id)
        for i in range(0, len(eval_encoded), config.eval_batch_size)
    ]
    evaluating = config.eval_every is not None and bool(eval_batches)
    lengths = [len(e.input_ids) for e in encoded] if config.group_by_length else None
    model = load_base_model(base, dtype="float32")
    model.config.use_cache = False

    state: dict[str, Any] = {"step": 0, "losses": []}
    optimizer_state = None
    # The best evaluation's adapter lives on the worker's disk and travels in every checkpoint.
    best_dir = Path(tempfile.mkdtemp(prefix="routenlp-best-adapter-"))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / STATE_FILE).read_text())
            if (Path(folder) / BEST_ADAPTER_DIR).is_dir():
                shutil.copytree(Path(folder) / BEST_ADAPTER_DIR, best_dir, dirs_exist_ok=True)
            saved = {k: state["distill"][k] for k in _LORA_SHAPE_FIELDS}
            wanted = {k: getattr(config, k) for k in _LORA_SHAPE_FIELDS}
            if saved != wanted:
                raise ConfigError(f"the run's checkpoint was trained with LoRA {saved}, this call asks for {wanted}")
            model = PeftModel.from_pretrained(model, folder, is_trainable=True)
            optimizer_state = torch.load(Path(folder) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    elif loop_config.get("init_adapter"):
        model = PeftModel.from_pretrained(model, loop_config["init_adapter"], is_trainable=True)
    else:
        model = get_peft_model(model, _lora_config(config))
    peft_model = model
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = config.learning_rate, config.weight_decay

    start_step = int(state["step"])
    losses: list[float] = [float(x) for x in state["losses"]][:start_step]
    evaluations: list[list[float]] = [list(e) for e in state.get("evaluations", []) if e[0] <= start_step]
    best_step: int | None = state.get("best_step")
    stopped_early = bool(state.get("stopped_early", False))
    train_seconds = 0.0
    last_reported = start_step

    def evaluate(step: int) -> None:
        """Held-out loss at ``step``; a new best replaces the kept adapter."""
        nonlocal best_step
        loss = held_out_loss(peft_model, eval_batches, device)
        previous = [e[1] for e in evaluations]
        evaluations.append([step, loss])
        if not previous or loss < min(previous):
            best_step = step
            shutil.rmtree(best_dir, ignore_errors=True)
            peft_model.save_pretrained(str(best_dir))

    def out_of_patience() -> bool:
        if config.patience is None or best_step is None:
            return False
        return sum(1 for e in evaluations if e[0] > best_step) >= config.patience

    def report(step: int) -> None:
        nonlocal last_reported
        window = losses[last_reported:step] or losses[-1:]
        metrics = {"step": step, "loss": sum(window) / len(window) if window else float("nan")}
        if evaluations and evaluations[-1][0] == step:
            metrics["held_out_loss"] = evaluations[-1][1]
        last_reported = step
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as folder:
            peft_model.save_pretrained(folder)
            torch.save(optimizer.state_dict(), Path(folder) / OPTIMIZER_FILE)
            if best_step is not None:
                shutil.copytree(best_dir, Path(folder) / BEST_ADAPTER_DIR)
            (Path(folder) / STATE_FILE).write_text(
                json.dumps({
                    "step": step, "losses": losses, "distill": config.model_dump(mode="json"),
                    "evaluations": evaluations, "best_step": best_step, "stopped_early": stopped_early,
                })
            )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=f"checkpoint_step_{step:06d}_{time.time_ns()}",
            )

    model.train()
    if evaluating and not evaluations:
        evaluate(0)  # the base model's held-out loss: a student must beat it to be kept
    for step in range(start_step, config.max_steps):
        if stopped_early:
            break
        started = time.perf_counter()
        batch = _collate(
            [encoded[i] for i in _batch_indices(step, rank, config.batch_size, world_size, len(encoded), config.seed,
                                                lengths)],
            tokenizer.pad_token_id,
        )
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.detach()
        if world_size > 1:
            torch.distributed.all_reduce(value)
            value /= world_size
        losses.append(float(value))
        train_seconds += time.perf_counter() - started
        if evaluating and ((step + 1) % config.eval_every == 0 or step + 1 == config.max_steps):
            evaluate(step + 1)
            stopped_early = out_of_patience() and step + 1 < config.max_steps
        if stopped_early or (step + 1) % config.checkpoint_every == 0 or step + 1 == config.max_steps:
            report(step + 1)
    if start_step >= config.max_steps or (stopped_early and last_reported == start_step):
        report(start_step)  # already finished: re-register the final checkpoint so the result carries it

    return {
        "losses": losses,
        "start_step": start_step,
        "steps": last_reported if stopped_early else max(start_step, config.max_steps),
        "train_seconds": train_seconds,
        "n_examples": len(encoded),
        "n_answer_tokens": sum(e.answer_tokens for e in encoded),
        "n_truncated": sum(e.truncated for e in encoded),
        "evaluations": [tuple(e) for e in evaluations],
        "best_step": best_step,
        "stopped_early": stopped_early,
    }


def _check_adapter_shape(adapter_dir: str | Path, config: DistillConfig) -> None:
    """An adapter to continue from must have the LoRA shape the run is configured with."""
    adapter_files(adapter_dir)  # raises, naming the folder, when it holds no adapter
    saved = json.loads((Path(adapter_dir) / ADAPTER_CONFIG_FILE).read_text())
    have = {"r": saved.get("r"), "alpha": saved.get("lora_alpha"),
            "target_modules": sorted(saved.get("target_modules") or [])}
    want = {"r": config.r, "alpha": config.alpha, "target_modules": sorted(config.target_modules)}
    if have != want:
        raise ConfigError(f"init_adapter {str(adapter_dir)!r} has LoRA {have}; this run is configured for {want}")


# -- the driver -----------------------------------------------------------------------------
def train_lora_adapter(
    base: TransformersEngineConfig,
    examples: list[DistillExample],
    config: DistillConfig,
    output_dir: str | Path,
    storage_path: str | Path,
    run_name: str,
    eval_examples: list[DistillExample] | None = None,
    init_adapter: str | Path | None = None,
) -> DistillResult:
    """Fit a LoRA adapter for ``base`` on ``examples`` with Ray Train; write it to ``output_dir``.

    With ``eval_examples`` and ``config.eval_every``, the held-out answer-token loss is measured
    before training and every ``eval_every`` steps; the adapter written is the one with the
    lowest held-out loss (none better than the base model fails), and ``config.patience`` stops
    the run once that loss has not improved for so many evaluations.

    ``init_adapter`` continues training an existing adapter (the tier's shipped one) instead of
    starting a new one; its rank, alpha and target modules must be the config's.

    The run lives in ``storage_path/run_name``. If that run already has a checkpoint, training
    continues from it up to ``config.max_steps`` (a finished run is not trained again). The
    adapter in ``output_dir`` is what ``TransformersEngineConfig.adapter_path`` loads; a
    ``distill.json`` next to it records the base model, the config and the run's metrics.
    Starts Ray (``ray.init()``) when it is not running yet.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.constants import V2_ENABLED_ENV_VAR, is_v2_enabled

    if not is_v2_enabled():
        raise ConfigError(f"distillation needs Ray Train V2; {V2_ENABLED_ENV_VAR} is set off in this environment")
    if not examples:
        raise ValueError("train_lora_adapter needs at least one example, got none")
    if base.adapter_path is not None:
        raise ConfigError(
            f"base.adapter_path is {base.adapter_path!r}; pass the base model (adapter_path=None), and the adapter "
            "to continue from as init_adapter"
        )
    if init_adapter is not None:
        _check_adapter_shape(init_adapter, config)
    started = time.perf_counter()
    resources: dict[str, float] = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "base": base.model_dump(mode="json"),
            "distill": config.model_dump(mode="json"),
            "examples": [e.model_dump(mode="json") for e in examples],
            "eval_examples": [e.model_dump(mode="json") for e in eval_examples or []],
            "init_adapter": str(Path(init_adapter).resolve()) if init_adapter is not None else None,
        },
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            storage_path=str(Path(storage_path).expanduser().resolve()),
            name=run_name,
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None or result.return_value is None:
        raise RouteNLPError(f"distillation run {run_name!r} ended without a checkpoint (run folder {result.path})")
    info = result.return_value

    if info.get("best_step") == 0 and init_adapter is None:
        raise RouteNLPError(
            f"distillation run {run_name!r}: no step beat the base model's held-out loss "
            f"(evaluations {info['evaluations']}); nothing written to {str(output_dir)!r}"
        )
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        source = Path(folder) / BEST_ADAPTER_DIR if info.get("best_step") is not None else Path(folder)
        for path in adapter_files(source):
            shutil.copy2(path, output / path.name)
    distill_result = DistillResult(
        adapter_dir=str(output),
        checkpoint_path=result.checkpoint.path,
        run_path=result.path,
        wall_seconds=time.perf_counter() - started,
        init_adapter=str(Path(init_adapter).resolve()) if init_adapter is not None else None,
        **info,
    )
    (output / METADATA_FILE).write_text(
        json.dumps(
            {
                "base": base.model_dump(mode="json"),
                "distill": config.model_dump(mode="json"),
                "result": distill_result.model_dump(mode="json"),
            },
            indent=2,
        )
    )
    return distill_result
