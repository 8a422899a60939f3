from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from routenlp_ray import ConfigError
from routenlp_ray.config import load_config, parse_config
from tests.conftest import REPO_ROOT, small_config_dict


def test_embedded_default_config_loads() -> None:
    config = load_config(REPO_ROOT / "serve_config.local.yaml")
    assert [t.name for t in config.tiers] == ["specialist", "smollm2", "frontier"]
    assert [t.engine.type for t in config.tiers[:2]] == ["specialist", "transformers"]
    assert "chat" not in config.tiers[0].tasks and "fin_summarization" not in config.tiers[1].tasks
    assert config.tiers[1].tasks == ["chat"]
    assert config.tiers[1].engine.adapter_path.endswith("artifacts/students/smollm2-v1")
    assert config.frontier.engine.type == "replay"
    assert config.server.default_task == "chat"


def test_gpu_config_loads_with_vllm_tiers() -> None:
    config = load_config(REPO_ROOT / "serve_config.yaml")
    assert {t.engine.type for t in config.tiers[:-1]} == {"vllm"}
    assert all(t.autoscaling.max_replicas > t.autoscaling.min_replicas for t in config.tiers if t.engine.type == "vllm")


def test_unknown_field_names_field_and_value(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["tiers"][0]["pricng"] = 3
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "tiers.0.pricng: unknown field (value: 3)" in str(err.value)


def test_invalid_value_names_field_and_value(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file, cascade={"alpha": 1.5})
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "cascade.alpha" in str(err.value) and "1.5" in str(err.value)


def test_wrong_engine_type_is_rejected(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["tiers"][0]["engine"] = {"type": "llamacpp", "model_source": "x"}
    with pytest.raises(ConfigError, match="llamacpp"):
        parse_config(data)


def test_cross_field_check_quotes_values(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["tiers"][0]["autoscaling"] = {"min_replicas": 3, "max_replicas": 2}
    with pytest.raises(ConfigError, match=r"min_replicas \(3\) must be <= max_replicas \(2\)"):
        parse_config(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server": {"default_task": "nope"}}, "server.default_task ('nope') is not a configured task"),
        ({"cascade": {"thresholds": {"ghost": {"chat": 1.0}}}}, "unknown tier 'ghost'"),
        ({"cascade": {"thresholds": {"cheap": {"ghost": 1.0}}}}, "unknown tasks ['ghost']"),
        ({"cascade": {"start_policy": "not a policy"}}, "cascade.start_policy"),
    ],
)
def test_cross_references_are_checked(tmp_path: Path, replay_file: Path, change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(small_config_dict(tmp_path, replay_file, **change))
    assert message in str(err.value)


def test_duplicate_tier_names_are_rejected(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["tiers"][1]["name"] = "cheap"
    with pytest.raises(ConfigError, match="duplicate name: 'cheap'"):
        parse_config(data)


def test_prompt_template_needs_input_slot(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["tasks"][0]["prompt_template"] = "Classify this"
    with pytest.raises(ConfigError, match="must contain '\\{input\\}'"):
        parse_config(data)


def test_env_references_expand_with_defaults(tmp_path: Path, replay_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["storage"]["log_uri"] = "${ROUTENLP_TEST_LOG:-/tmp/default-log}"
    assert parse_config(data).storage.log_uri == "/tmp/default-log"
    monkeypatch.setenv("ROUTENLP_TEST_LOG", "s3://bucket/log")
    assert parse_config(data).storage.log_uri == "s3://bucket/log"
    data["storage"]["log_uri"] = "${ROUTENLP_UNSET_VARIABLE}"
    with pytest.raises(ConfigError, match="ROUTENLP_UNSET_VARIABLE"):
        parse_config(data)


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_relative_paths_are_pinned(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["storage"] = {"log_uri": "var/log", "spool_dir": "var/spool"}
    data["tiers"][0]["engine"]["records"] = ["data/*.jsonl"]
    pinned = parse_config(data).with_absolute_paths(tmp_path)
    assert pinned.storage.log_uri == str(tmp_path / "var" / "log")
    assert pinned.tiers[0].engine.records == [str(tmp_path / "data" / "*.jsonl")]
    data["storage"]["log_uri"] = "s3://bucket/log"
    assert parse_config(data).with_absolute_paths(tmp_path).storage.log_uri == "s3://bucket/log"


def test_embedded_default_ships_calibrated_thresholds() -> None:
    from routenlp_ray.conformal import ThresholdTable

    config = load_config(REPO_ROOT / "serve_config.local.yaml").with_absolute_paths(REPO_ROOT)
    table = ThresholdTable.load(config.cascade.thresholds_path)
    assert table.alpha == config.cascade.alpha
    assert table.score == "mean_nll (fin_ner=max_nll)" and config.cascade.uncertainty_for("fin_ner") == "max_nll"
    assert set(table.thresholds) <= {t.name for t in config.tiers[:-1]}
    # The specialist may answer every task it serves; SmolLM2 serves chat only, which has no metric
    # to calibrate on, so it has no calibrated threshold at all (chat uses default_threshold).
    specialist = config.tier("specialist")
    assert all(table.get("specialist", task) is not None for task in specialist.tasks)
    assert all(delta is None for delta in table.thresholds.get("smollm2", {}).values())


def test_tier_tasks_are_checked_against_the_configured_tasks(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["tiers"][0]["tasks"] = ["chat", "ghost"]
    with pytest.raises(ConfigError, match=r"tiers\['cheap'\]\.tasks names unknown tasks \['ghost'\]"):
        parse_config(data)
    data = small_config_dict(tmp_path, replay_file)
    data["tiers"][1]["tasks"] = ["chat"]
    with pytest.raises(ConfigError, match=r"the last tier \('frontier'\) .* cannot limit its tasks"):
        parse_config(data)


def test_a_specialist_tier_must_name_its_tasks(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    data["tiers"][0]["engine"] = {"type": "specialist", "path": "artifacts/specialists/x"}
    with pytest.raises(ConfigError, match="a specialist tier must list the tasks it serves"):
        parse_config(data)
    data["tiers"][0]["tasks"] = ["chat"]
    config = parse_config(data).with_absolute_paths(tmp_path)
    assert config.tiers[0].engine.path == str(tmp_path / "artifacts/specialists/x")
    assert config.tiers[0].serves("chat") and not config.tiers[0].serves("other")


def vllm_tier_dict(**engine: Any) -> dict[str, Any]:
    return {"name": "small", "engine": {"type": "vllm", "model_source": "some/model", **engine},
            "pricing": {"input_per_1m": 0.1, "output_per_1m": 0.2}, "resources": {"num_cpus": 1, "num_gpus": 1}}


@pytest.mark.parametrize(("engine", "resources", "message"), [
    ({"device": "cpu", "accelerator_type": "L4"}, {"num_gpus": 0},
     "accelerator_type 'L4' needs device: gpu"),
    ({"cpu_kvcache_space_gb": 2}, {"num_gpus": 1}, "cpu_kvcache_space_gb 2 needs device: cpu"),
    ({"device": "cpu"}, {"num_gpus": 1}, "resources.num_gpus 1.0 with engine.device cpu"),
    ({}, {"num_gpus": 4}, "resources.num_gpus 4.0: a vLLM tier's resources are per engine worker"),
    ({}, {"num_gpus": 0}, "resources.num_gpus 0.0"),
    ({"max_input_tokens": 1000, "engine_kwargs": {"max_model_len": 1024}}, {"num_gpus": 1},
     "engine.max_input_tokens 1000 + limits.max_tokens 512 exceeds engine.engine_kwargs.max_model_len 1024"),
    ({"device": "cpu", "cpu_threads_bind": "all of them"}, {"num_gpus": 0}, "cpu_threads_bind"),
])
def test_vllm_engine_config_errors_name_the_field(
    tmp_path: Path, replay_file: Path, engine: dict[str, Any], resources: dict[str, Any], message: str
) -> None:
    data = small_config_dict(tmp_path, replay_file)
    tier = vllm_tier_dict(**engine)
    tier["resources"].update(resources)
    data["tiers"][0] = tier
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


def test_a_cpu_vllm_engine_sets_vllms_cpu_environment(tmp_path: Path, replay_file: Path) -> None:
    data = small_config_dict(tmp_path, replay_file)
    tier = vllm_tier_dict(device="cpu", cpu_kvcache_space_gb=2, cpu_threads_bind="0-1")
    tier["resources"]["num_gpus"] = 0
    data["tiers"][0] = tier
    engine = parse_config(data).tier("small").engine
    assert engine.environment() == {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}


def test_cpu_vllm_config_loads() -> None:
    config = load_config(REPO_ROOT / "serve_config.vllm-cpu.yaml")
    engine = config.tier("smollm2").engine
    assert engine.type == "vllm" and engine.device == "cpu" and engine.engine_kwargs["dtype"] == "float32"
    assert [t.name for t in config.tiers] == ["specialist", "smollm2", "frontier"]
