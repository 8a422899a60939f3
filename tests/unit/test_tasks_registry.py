"""The one task type: built-in tasks, tasks declared in config, and the public names of the task layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from routenlp_ray import ConfigError, tasks
from routenlp_ray.config import load_config
from routenlp_ray.tasks import BUILTIN_TASKS, TaskSpec, get_task_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
SIX_TASKS = ["fin_ner", "fin_summarization", "cs_intent", "cs_response", "legal_clause", "legal_risk"]


def test_exports_are_sorted_and_importable() -> None:
    assert tasks.__all__ == sorted(tasks.__all__)
    for name in tasks.__all__:
        assert hasattr(tasks, name), name


def test_six_built_ins(tmp_path: Path) -> None:
    assert sorted(BUILTIN_TASKS) == sorted(SIX_TASKS)
    expected = {
        "fin_ner": ("entities", "entity_f1", 0.8, "f1"),
        "fin_summarization": ("text", "rouge_l", 0.3, "rouge_l"),
        "cs_intent": ("label", "macro_f1", 1.0, "macro_f1"),
        "cs_response": ("text", "bertscore", 0.6, "bertscore_f1"),
        "legal_clause": ("label", "macro_f1", 1.0, "macro_f1"),
        "legal_risk": ("label", "accuracy", 1.0, "accuracy"),
    }
    for name, (parser, metric, bar, primary) in expected.items():
        spec = get_task_spec(name)
        assert (spec.parser, spec.metric, spec.success_bar, spec.primary_metric) == (parser, metric, bar, primary)
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.jsonl").touch()
        assert spec.data_path is None and spec.data_file(tmp_path, "train") == tmp_path / name / "train.jsonl"
        assert TaskSpec(name=name) == spec


@pytest.mark.parametrize("config_file", ["serve_config.local.yaml", "serve_config.yaml"])
def test_serve_configs_name_built_ins_without_repeating_them(config_file: str) -> None:
    raw = yaml.safe_load((REPO_ROOT / config_file).read_text())
    declared = {t["name"]: t for t in raw["applications"][0]["args"]["tasks"]}
    config = load_config(REPO_ROOT / config_file)
    for name in SIX_TASKS:
        assert set(declared[name]) == {"name"}, f"{config_file} repeats built-in fields of {name}: {declared[name]}"
        assert config.task(name) == get_task_spec(name)


def test_unknown_built_in() -> None:
    with pytest.raises(ConfigError, match="no built-in task 'nope'; built-in tasks: \\['cs_intent'"):
        get_task_spec("nope")


def test_messages() -> None:
    spec = get_task_spec("legal_risk")
    messages = spec.messages("You waive all rights.")
    assert messages[0] == {"role": "system", "content": spec.system_prompt}
    assert messages[1] == {"role": "user", "content": "You waive all rights."}


def test_config_of_a_built_in_keeps_its_parser_and_unset_fields() -> None:
    spec = TaskSpec(name="cs_intent", metric="macro_f1", prompt_template="Message: {input}")
    builtin = get_task_spec("cs_intent")
    assert spec.labels == builtin.labels and spec.parser == "label"
    assert spec.system_prompt == builtin.system_prompt
    assert spec.prompt_template == "Message: {input}"
    assert spec.success_bar == 1.0
    # An explicit bar in config wins over the built-in one.
    assert TaskSpec(name="cs_response", success_bar=0.7).success_bar == 0.7
    assert TaskSpec(name="cs_response").success_bar == 0.6


def test_a_built_in_name_with_another_metric_shares_only_the_name() -> None:
    spec = TaskSpec(name="cs_intent", metric="exact_match")
    assert spec.system_prompt is None and spec.labels is None and spec.parser == "text"


def test_user_task_from_config(tmp_path: Path) -> None:
    spec = TaskSpec.model_validate(
        {
            "name": "ticket_priority",
            "system_prompt": "Rate the ticket's priority: low, medium or high.",
            "prompt_template": "Ticket: {input}",
            "metric": "accuracy",
            "labels": ["low", "medium", "high"],
            "data_path": str(tmp_path / "tickets"),
        }
    )
    assert spec.parser == "label" and spec.labels == ("low", "medium", "high")
    assert spec.render_user_message("printer on fire") == "Ticket: printer on fire"
    assert spec.score("Priority: HIGH", "high") == 1.0
    assert spec.score("urgent", "high") == 0.0
    assert spec.evaluate(["low", "high", "??"], ["low", "medium", "high"])["accuracy"] == pytest.approx(1 / 3)
    (tmp_path / "tickets").mkdir()
    (tmp_path / "tickets" / "train.jsonl").touch()
    assert spec.data_file("/elsewhere", "train") == tmp_path / "tickets" / "train.jsonl"


def test_user_task_without_label_set_compares_normalised_text() -> None:
    spec = TaskSpec(name="yes_no", metric="accuracy")
    assert spec.labels is None
    assert spec.score(" Yes. ", "yes") == 1.0
    assert spec.score("no", "yes") == 0.0
    assert spec.score("", "yes") == 0.0


def test_exact_match_and_none_metrics() -> None:
    exact = TaskSpec(name="echo", metric="exact_match")
    assert exact.score("Hello   World", "hello world") == 1.0
    assert exact.evaluate(["a", "b"], ["a", "c"]) == {"exact_match": 0.5}
    chat = TaskSpec(name="chat")
    assert not chat.has_metric
    with pytest.raises(ConfigError, match="task 'chat' has metric 'none'"):
        chat.score("hi", "hello")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="metric 'entity_f1' needs parser entities"):
        TaskSpec(name="x", parser="label", metric="entity_f1", success_bar=0.5)
    with pytest.raises(ValueError, match="must contain '\\{input\\}'"):
        TaskSpec(name="x", parser="text", metric="rouge_l", success_bar=0.5, prompt_template="hi")
    with pytest.raises(ValueError, match="cannot be told apart"):
        TaskSpec(name="x", parser="label", metric="accuracy", success_bar=1, labels=("A b", "a_b"))
    with pytest.raises(ValueError, match="extra"):
        TaskSpec(name="x", parser="text", metric="rouge_l", success_bar=0.5, colour="red")


def test_specs_are_frozen() -> None:
    with pytest.raises(ValueError):
        get_task_spec("cs_intent").success_bar = 0.5  # type: ignore[misc]


def test_evaluate_checks_lengths() -> None:
    with pytest.raises(ValueError, match="got 1 predictions for 2 references"):
        get_task_spec("legal_risk").evaluate(["fair"], ["fair", "fair"])
