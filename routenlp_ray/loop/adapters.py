"""Load a tier's base model and tokenizer the way the engine does, with or without a LoRA adapter.

The distillation loop trains on exactly what :class:`~routenlp_ray.engines.transformers_engine.TransformersEngine`
serves: the same model folder or GGUF file, and prompts rendered by the same chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from routenlp_ray._exceptions import ArtifactError
from routenlp_ray.config.tiers import TransformersEngineConfig
from routenlp_ray.models.sources import resolve_model_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_CONFIG_FILE = "adapter_config.json"

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "adapter_files",
    "load_adapted_model",
    "load_base_model",
    "load_tokenizer",
    "render_prompt",
]


def _load_kwargs(config: TransformersEngineConfig) -> dict[str, Any]:
    return {"gguf_file": config.gguf_file} if config.gguf_file else {}


def load_tokenizer(config: TransformersEngineConfig) -> PreTrainedTokenizerBase:
    """The tier's tokenizer, with a pad token (EOS when the model has none), as the engine sets it up."""
    from transformers import AutoTokenizer

    path = resolve_model_source(config.model_source)
    tokenizer = AutoTokenizer.from_pretrained(str(path), **_load_kwargs(config))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(config: TransformersEngineConfig, *, dtype: str | None = None) -> PreTrainedModel:
    """The tier's base model on CPU, ignoring ``config.adapter_path``; a GGUF file is dequantised.

    ``dtype`` overrides ``config.dtype`` (training uses ``"float32"``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_source(config.model_source)
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype or config.dtype), **_load_kwargs(config)
    )


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The prompt text the engine feeds the model for ``messages`` (chat template, generation prompt on)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def adapter_files(adapter_dir: str | Path) -> list[Path]:
    """The files of a saved LoRA adapter (``adapter_config.json`` and its weights); raises if there is none."""
    folder = Path(adapter_dir)
    if not (folder / ADAPTER_CONFIG_FILE).is_file():
        raise ArtifactError(f"{str(folder)!r} holds no LoRA adapter (no {ADAPTER_CONFIG_FILE})")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith("adapter_"))
    if len(files) < 2:
        raise ArtifactError(f"{str(folder)!r} has {ADAPTER_CONFIG_FILE} but no adapter weights")
    return files


def load_adapted_model(
    config: TransformersEngineConfig,
    adapter_dir: str | Path,
    *,
    merge: bool = True,
    dtype: str | None = None,
) -> PreTrainedModel:
    """The base model with the LoRA adapter in ``adapter_dir`` applied, in eval mode.

    With ``merge`` (the default) the adapter is folded into the weights, so the model runs
    as fast as the base model; without it a ``peft.PeftModel`` is returned.
    """
    from peft import PeftModel

    adapter_files(adapter_dir)
    model = PeftModel.from_pretrained(load_base_model(config, dtype=dtype), str(adapter_dir))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return model
