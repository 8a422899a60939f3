"""`routenlp export-model`: the packaged SmolLM2 GGUF as the plain Hugging Face folder vLLM loads.

vLLM reads the folder's config.json; a config that still says the weights are GGUF-quantized is
refused at engine start ("Unknown quantization method: gguf"), so the export must not carry it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routenlp_ray.models.export import EXPORT_FILE, export_hf_folder

pytestmark = pytest.mark.slow


def test_the_export_is_a_plain_folder_that_answers_and_is_written_once(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_hf_folder(tmp_path / "smollm2")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((out / EXPORT_FILE).read_text())["gguf_sha256"]
    weights = out / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert export_hf_folder(tmp_path / "smollm2") == out and weights.stat().st_mtime_ns == written  # no rewrite

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    answer = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
