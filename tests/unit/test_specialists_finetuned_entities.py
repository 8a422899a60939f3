"""The fine-tuned entity tagger on the real packaged MiniLM (no Ray): fit, answer, evidence, save, load, continue."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from routenlp_ray import ArtifactError
from routenlp_ray.conformal import AnswerEvidence, max_nll
from routenlp_ray.specialists import FineTuneSettings, SpecialistEncoder, SpecialistTrainingConfig, TaskPairs, fit_heads
from routenlp_ray.specialists.finetuned import WEIGHTS_FILE, FineTunedEntitySpecialist, FineTunedLabelSpecialist
from routenlp_ray.specialists.heads import load_head

BANKS = ["Silicon Valley Bank", "Wells Fargo", "Bank of America", "Chase Bank", "Citibank", "Comerica Bank"]
PEOPLE = ["John Smith", "Mary Jones", "Robert Brown", "Linda Davis", "James Wilson", "Susan Clark"]
CITIES = ["Santa Clara", "Boston", "New York", "Chicago", "Dallas", "Denver"]


def _sentence(i: int) -> tuple[str, list[dict[str, str]]]:
    bank, person, city = BANKS[i % 6], PEOPLE[(i * 5 + 1) % 6], CITIES[(i * 7 + 2) % 6]
    if i % 3 == 0:
        return f"This Agreement is made by {bank} located in {city} .", [
            {"text": bank, "type": "ORG"}, {"text": city, "type": "LOC"}]
    if i % 3 == 1:
        return f"Signed by {person} , President of {bank} .", [
            {"text": person, "type": "PER"}, {"text": bank, "type": "ORG"}]
    return "The Borrower shall repay the Loan in full on the Maturity Date .", []


TEXTS, ENTITIES = zip(*[_sentence(i) for i in range(36)])
ANSWERS = [json.dumps(e) for e in ENTITIES]
FAST = {"trained_layers": 1, "epochs": 8, "learning_rate": 3e-4, "head_learning_rate": 3e-2, "batch_size": 8,
        "holdout": 0.15, "num_threads": 1}


@pytest.fixture(scope="module")
def head() -> FineTunedEntitySpecialist:
    return FineTunedEntitySpecialist(**FAST).fit(list(TEXTS), ANSWERS)


def test_it_learns_bio_tags_from_the_frontiers_entity_lists(head) -> None:
    assert head.classes_.tolist() == ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]
    assert sorted(head.holdout_scores_) == list(range(1, FAST["epochs"] + 1))
    assert head.epochs_ == max(head.holdout_scores_, key=lambda e: (head.holdout_scores_[e], -e))
    right = [json.loads(p) == e for p, e in zip(head.predict(list(TEXTS)), ENTITIES)]
    assert np.mean(right) >= 0.9
    # A name in a place it was never seen in: the tagger reads context, not a word list.
    [unseen] = head.predict(["This Agreement is made by Wells Fargo located in Boston ."])
    assert json.loads(unseen) == [{"text": "Wells Fargo", "type": "ORG"}, {"text": "Boston", "type": "LOC"}]


def test_its_evidence_is_each_words_tag_log_probability(head) -> None:
    text = "Signed by Mary Jones , President of Citibank ."
    [answer] = head.answer([text], top_k=3)
    [probs] = head.word_probas([text.split()])
    assert probs.shape == (len(text.split()), len(head.classes_))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert answer.token_logprobs == pytest.approx(np.log(probs.max(axis=1)).tolist(), abs=1e-5)
    assert all(len(top) == 3 and top == sorted(top, reverse=True) for top in answer.top_logprobs)
    # max_nll, the fin_ner score, is the least sure word.
    assert max_nll(AnswerEvidence(answer.text, answer.token_logprobs)) == pytest.approx(-math.log(probs.max(axis=1).min()), abs=1e-5)
    # An empty query has nothing to be unsure about.
    [empty] = head.answer([""])
    assert empty.text == "[]" and empty.token_logprobs == [0.0]


def test_a_batch_answers_as_single_queries_do(head) -> None:
    texts = [TEXTS[0], TEXTS[1], "The Loan shall bear interest at the Prime Rate as published by Chase Bank in New York ."]
    batched = head.word_probas([t.split() for t in texts], batch_size=3)
    for text, probs in zip(texts, batched):
        np.testing.assert_allclose(probs, head.word_probas([text.split()])[0], atol=1e-4)


def test_words_past_max_length_are_never_sure(head) -> None:
    short = FineTunedEntitySpecialist(**FAST, max_length=8)
    short.classes_, short.model_ = head.classes_, head.model_
    words = TEXTS[0].split()
    [probs] = short.word_probas([words])
    # [CLS] + 6 word pieces fit; the rest are cut off and get uniform rows (their answer escalates).
    assert np.allclose(probs[-3:], 1.0 / len(head.classes_))
    assert probs[0].max() > 0.5


def test_it_round_trips_through_save_and_load(head, tmp_path: Path) -> None:
    folder = head.save(tmp_path / "ner")
    settings = json.loads((folder / "head.json").read_text())
    assert settings["kind"] == "finetuned_entities" and settings["max_length"] == 512
    loaded = load_head(folder, SpecialistEncoder(num_threads=1))
    assert isinstance(loaded, FineTunedEntitySpecialist)
    assert loaded.predict(list(TEXTS)) == head.predict(list(TEXTS))
    with pytest.raises(ArtifactError, match="not a 'finetuned_label' one"):
        FineTunedLabelSpecialist.load(folder)


def test_a_refit_continues_from_the_fitted_tagger_and_can_learn_a_new_type(head, tmp_path: Path) -> None:
    base = head.save(tmp_path / "base")
    misc = ["The notes are governed by the Uniform Commercial Code .", "Terms follow the Uniform Commercial Code ."]
    answers = [json.dumps([{"text": "Uniform Commercial Code", "type": "MISC"}])] * 2
    frozen = {**FAST, "epochs": 1, "head_learning_rate": 1e-9, "learning_rate": 1e-9}
    continued = FineTunedEntitySpecialist(**frozen, init_from=base).fit(list(TEXTS) + misc, ANSWERS + answers)
    assert "B-MISC" in continued.classes_ and "B-MISC" not in continued.continued_classes_
    assert continued.predict(list(TEXTS)) == head.predict(list(TEXTS))


def test_the_training_config_fine_tunes_an_entity_task(tmp_path: Path) -> None:
    settings = FineTuneSettings(trained_layers=1, epochs=1, batch_size=8)
    pairs = {"ner": TaskPairs(kind="entities", texts=list(TEXTS), answers=ANSWERS)}
    summary = fit_heads(pairs, SpecialistTrainingConfig(finetune={"ner": settings}), tmp_path)
    head = json.loads((tmp_path / "ner" / "head.json").read_text())
    assert head["kind"] == "finetuned_entities" and head["max_length"] == 512  # the tagger's default, not a label head's
    assert summary["ner"]["kind"] == "entities" and "holdout_at_epoch=1" in summary["ner"]["metrics"]
    assert (tmp_path / "ner" / WEIGHTS_FILE).is_file() and (tmp_path / "ner" / "pairs.jsonl").is_file()


def test_an_artifact_can_leave_its_training_pairs_out(tmp_path: Path) -> None:
    settings = FineTuneSettings(trained_layers=1, epochs=1, batch_size=8)
    pairs = {"ner": TaskPairs(kind="entities", texts=list(TEXTS), answers=ANSWERS)}
    fit_heads(pairs, SpecialistTrainingConfig(finetune={"ner": settings}, keep_pairs=False), tmp_path)
    assert (tmp_path / "ner" / WEIGHTS_FILE).is_file() and not (tmp_path / "ner" / "pairs.jsonl").exists()


def test_a_quantized_tagger_learns_on_the_int8_trunk_and_answers_in_int8(tmp_path: Path) -> None:
    import torch

    quantized = FineTunedEntitySpecialist(**FAST, quantize=True).fit(list(TEXTS), ANSWERS)
    right = [json.loads(p) == e for p, e in zip(quantized.predict(list(TEXTS)), ENTITIES)]
    # One trained layer on 36 sentences: it learns (0.83 here, a blank tagger 0.33); accuracy on data is a benchmark's.
    assert np.mean(right) >= 0.75
    # Its trunk is not the float32 one the other heads share, and its served top runs int8 linear layers.
    assert quantized._trunk().quantize and quantized._trunk() is not FineTunedEntitySpecialist(**FAST)._trunk()
    served = quantized._served_model()
    assert not any(type(m) is torch.nn.Linear for m in served.modules())
    assert served is quantized._served_model()  # quantized once, not per query
    # The weights saved are the float32 top's (half precision on disk); loading quantizes again, to the same answers.
    folder = quantized.save(tmp_path / "int8")
    assert json.loads((folder / "head.json").read_text())["quantize"] is True
    loaded = load_head(folder, SpecialistEncoder(num_threads=1))
    assert loaded.quantize and loaded.predict(list(TEXTS)) == quantized.predict(list(TEXTS))


def test_a_loop_refit_keeps_the_heads_precision(head, tmp_path: Path) -> None:
    from routenlp_ray.loop.specialist_student import _continued_settings

    folder = head.save(tmp_path / "fp32")
    assert _continued_settings(folder).quantize is False
    settings = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**settings, "quantize": True}))
    assert _continued_settings(folder).quantize is True


def test_the_shipped_tagger_answers_alike_eager_on_one_thread_and_traced_on_two() -> None:
    import torch

    from tests.conftest import REPO_ROOT

    folder = REPO_ROOT / "artifacts" / "specialists" / "embedded-v5" / "fin_ner"
    alone = load_head(folder, SpecialistEncoder(workers=1, trace=False))
    together = load_head(folder, SpecialistEncoder(workers=2))
    assert together.encoder.workers == 2  # the head runs its trunk and top on the encoder's workers
    assert isinstance(together._served_tagger(together._trunk()), torch.jit.ScriptModule)
    assert not isinstance(alone._served_tagger(alone._trunk()), torch.jit.ScriptModule)
    sentences = [s.split() for s in [
        "Borrower will pay Bank the unpaid principal amount .", "Silicon Valley Bank , a California corporation",
        "This Agreement is made by Acme Corp and John Smith of New York .", "Lender", ""]]
    for a, b in zip(alone.word_probas(sentences), together.word_probas(sentences)):
        np.testing.assert_array_equal(a, b)
    assert [x.text for x in alone.answer([" ".join(s) for s in sentences])] == \
        [x.text for x in together.answer([" ".join(s) for s in sentences])]
