"""Specialist heads and artifacts on the real packaged MiniLM (no Ray): fit, answer, save, load, refuse."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from routenlp_ray import ArtifactError, NotFittedError
from routenlp_ray.conformal import AnswerEvidence, max_nll, mean_nll
from routenlp_ray.specialists import (
    AnswerCache,
    EntitySpecialist,
    LabelSpecialist,
    SpecialistEncoder,
    align_entities,
    verify_artifact,
)
from routenlp_ray.specialists.artifact import MANIFEST, HeadEntry, data_fingerprint, write_artifact
from routenlp_ray.specialists.bio import spans as _spans

CARD = ["my card has not arrived yet", "when will my new card arrive", "still waiting for the card I ordered",
        "the card you sent me never came", "how long does card delivery take", "is my card on its way"]
REFUND = ["I want my money back for this purchase", "please refund the payment", "how do I get a refund",
          "refund the charge on my account", "I was charged twice, give me a refund", "reverse this payment please"]


@pytest.fixture(scope="module")
def encoder() -> SpecialistEncoder:
    return SpecialistEncoder(num_threads=1)


@pytest.fixture(scope="module")
def label_head(encoder: SpecialistEncoder) -> LabelSpecialist:
    texts = CARD + REFUND
    answers = ["card_arrival"] * len(CARD) + ["request_refund"] * len(REFUND)
    return LabelSpecialist(encoder, Cs=[10.0]).fit(texts, answers)


def test_label_head_answers_with_the_frontiers_label_and_its_log_probability(label_head: LabelSpecialist) -> None:
    assert label_head.classes_.tolist() == ["card_arrival", "request_refund"]
    [answer] = label_head.answer(["where is the card I am waiting for?"])
    assert answer.text == "card_arrival"
    proba = label_head.predict_proba(["where is the card I am waiting for?"])[0]
    assert proba.shape == (2,) and proba.sum() == pytest.approx(1.0)
    assert answer.token_logprobs == [pytest.approx(math.log(proba.max()), abs=1e-5)]
    assert len(answer.top_logprobs[0]) == 2
    # The evidence means what it means for an LLM tier: mean NLL is -log p(chosen label).
    assert mean_nll(AnswerEvidence(answer.text, answer.token_logprobs)) == pytest.approx(-math.log(proba.max()), abs=1e-5)


def test_a_head_round_trips_through_save_and_load(label_head: LabelSpecialist, encoder, tmp_path: Path) -> None:
    label_head.save(tmp_path / "head")
    loaded = LabelSpecialist.load(tmp_path / "head", encoder)
    texts = ["refund me", "card not here"]
    np.testing.assert_allclose(loaded.predict_proba(texts), label_head.predict_proba(texts), rtol=1e-5)


def test_lexical_features_let_a_label_head_learn_the_deciding_word(encoder: SpecialistEncoder, tmp_path: Path) -> None:
    # Two labels whose queries differ only in one rare word: the sentence vectors barely move,
    # the word's TF-IDF column separates them.
    texts = [f"please {verb} my {thing}" for verb in ("assign", "terminate") for thing in
             ("contract", "agreement", "deal", "licence", "lease", "order")]
    answers = ["Anti-Assignment"] * 6 + ["Termination"] * 6
    head = LabelSpecialist(encoder, Cs=[100.0], lexical_features=50).fit(texts, answers)
    assert 0 < head.lexical_.n_features_ <= 50
    assert head.predict(["please assign my contract", "please terminate my lease"]) == ["Anti-Assignment", "Termination"]
    head.save(tmp_path / "head")
    assert (tmp_path / "head" / "lexical.json").is_file()
    loaded = LabelSpecialist.load(tmp_path / "head", encoder)
    probe = ["assign it", "terminate it now"]
    np.testing.assert_allclose(loaded.predict_proba(probe), head.predict_proba(probe), rtol=1e-5)
    with pytest.raises(ValueError, match="pass the texts"):
        head.answer_from_vectors(encoder.encode(probe))
    # A vocabulary that does not match the weights is refused, naming the file.
    data = json.loads((tmp_path / "head" / "lexical.json").read_text())
    data["idf"] = data["idf"][:-1]
    (tmp_path / "head" / "lexical.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="lexical.json"):
        LabelSpecialist.load(tmp_path / "head", encoder)


def test_an_unfitted_head_says_so(encoder: SpecialistEncoder) -> None:
    with pytest.raises(NotFittedError, match="call fit or load"):
        LabelSpecialist(encoder).predict(["x"])
    with pytest.raises(ValueError, match="as many answers as texts"):
        LabelSpecialist(encoder).fit(["a", "b"], ["x"])


def test_entities_are_aligned_to_words_and_decoded_back() -> None:
    words = "Loan between SILICON VALLEY BANK and Acme Inc . in California".split()
    entities = [{"text": "SILICON VALLEY BANK", "type": "ORG"}, {"text": "California", "type": "LOC"},
                {"text": "not in the text", "type": "PER"}]
    tags = align_entities(words, entities)
    assert tags[2:5] == ["B-ORG", "I-ORG", "I-ORG"] and tags[-1] == "B-LOC" and tags.count("O") == len(words) - 4
    assert _spans(tags) == [(2, 5, "ORG"), (len(words) - 1, len(words), "LOC")]
    assert _spans(["I-ORG", "I-ORG", "O", "B-PER", "I-LOC"]) == [(0, 2, "ORG"), (3, 4, "PER"), (4, 5, "LOC")]


def test_entity_head_tags_words_and_reports_each_words_confidence(encoder: SpecialistEncoder) -> None:
    texts = [f"The loan from {bank} to {company} was signed" for bank, company in
             [("Chase", "Acme"), ("Citibank", "Globex"), ("Wells", "Initech"), ("Barclays", "Umbrella")]] * 3
    answers = [json.dumps([{"text": t.split()[3], "type": "ORG"}, {"text": t.split()[5], "type": "ORG"}]) for t in texts]
    head = EntitySpecialist(encoder, Cs=[10.0]).fit(texts, answers)
    [answer] = head.answer(["The loan from Chase to Globex was signed"])
    assert {e["text"] for e in json.loads(answer.text)} == {"Chase", "Globex"}
    assert len(answer.token_logprobs) == 8  # one per word
    assert max_nll(AnswerEvidence(answer.text, answer.token_logprobs)) >= mean_nll(
        AnswerEvidence(answer.text, answer.token_logprobs)
    )
    assert head.answer([""])[0].text == "[]"


def test_answer_cache_returns_the_nearest_queries_answer_and_its_similarity(encoder: SpecialistEncoder) -> None:
    cache = AnswerCache(encoder).fit(["how do I reset my password", "cancel my order"], ["Go to settings.", "Sorry!"])
    [answer] = cache.answer(["how can I reset my password?"])
    assert answer.text == "Go to settings."
    similarity = math.exp(answer.token_logprobs[0])
    assert 0.8 < similarity <= 1.0
    assert mean_nll(AnswerEvidence(answer.text, answer.token_logprobs)) == pytest.approx(-math.log(similarity))


def test_answer_cache_past_the_exact_limit_uses_an_hnsw_index_with_the_same_answers(encoder) -> None:
    texts = [f"question number {i} about {topic}" for i, topic in enumerate(["cards", "loans", "fees", "refunds"] * 5)]
    answers = [f"answer {i}" for i in range(len(texts))]
    exact = AnswerCache(encoder).fit(texts, answers)
    indexed = AnswerCache(encoder, exact_search_max=5).fit(texts, answers)
    assert exact.index_ is None and indexed.index_ is not None
    queries = ["question number 3 about refunds", "something about loans, number 9"]
    assert indexed.predict(queries) == exact.predict(queries)


def _artifact(label_head: LabelSpecialist, tmp_path: Path) -> Path:
    label_head.save(tmp_path / "heads" / "cs_intent")
    entry = HeadEntry(kind="label", files={}, data_fingerprint=data_fingerprint(["a"], ["b"]), n_examples=12)
    return write_artifact(tmp_path / "v1", "v1", label_head.encoder.model_source,
                          {"cs_intent": (tmp_path / "heads" / "cs_intent", entry)})


def test_an_artifact_is_checksummed_and_a_corrupt_file_is_refused_by_name(label_head, tmp_path: Path) -> None:
    folder = _artifact(label_head, tmp_path)
    assert verify_artifact(folder, ["cs_intent"]).version == "v1"
    with pytest.raises(ArtifactError, match="already exists"):
        _artifact(label_head, tmp_path)
    with pytest.raises(ArtifactError, match=r"no head for tasks \['legal_risk'\]"):
        verify_artifact(folder, ["cs_intent", "legal_risk"])
    weights = folder / "cs_intent" / "head.npz"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=r"cs_intent/head\.npz.*checksum"):
        verify_artifact(folder, ["cs_intent"])


def test_a_head_trained_on_another_encoder_is_refused(label_head, tmp_path: Path) -> None:
    folder = _artifact(label_head, tmp_path)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["encoder"]["fingerprint"] = "0" * 64
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="was trained on encoder"):
        verify_artifact(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json.*invalid"):
        verify_artifact(folder)


async def test_the_shipped_artifact_answers_like_any_engine_and_refuses_other_tasks() -> None:
    from routenlp_ray import EngineError
    from routenlp_ray.config.tiers import SpecialistEngineConfig
    from routenlp_ray.engines import GenerationRequest
    from routenlp_ray.engines.specialist import SpecialistEngine
    from tests.conftest import DATA_DIR, REPO_ROOT

    if not (DATA_DIR / "cs_response" / "train.jsonl").is_file():
        pytest.skip(f"the shipped cs_response cache reads its rows from {DATA_DIR} (set ROUTENLP_DATA)")
    config = SpecialistEngineConfig(
        path=str(REPO_ROOT / "artifacts/specialists/embedded-v3"), exact_search_max=10, data_dir=str(DATA_DIR)
    )
    engine = SpecialistEngine(config, name="specialist", tasks=["cs_intent", "cs_response", "fin_ner"])
    assert engine.heads["cs_response"].index_ is not None  # the config's exact_search_max reached the cache

    def ask(task: str, text: str) -> GenerationRequest:
        return GenerationRequest(request_id=task, messages=[{"role": "user", "content": text}], task=task, raw_input=text)

    intent, reply, entities = await engine.generate_batch([
        ask("cs_intent", "My card still has not arrived, where is it?"),
        ask("cs_response", "how do I cancel my order?"),
        ask("fin_ner", "The Borrower , Acme Corp , is located in Texas ."),
    ])
    assert intent.text == "card_arrival" and len(intent.token_logprobs) == 1 and len(intent.top_logprobs[0]) == 5
    assert reply.text and reply.metadata["head"] == "cache"
    assert isinstance(json.loads(entities.text), list) and len(entities.token_logprobs) == 11  # one per word
    assert intent.model == f"specialist@{engine.version}" and intent.completion_tokens >= 1
    with pytest.raises(EngineError, match=r"no specialist head for tasks \['legal_risk'\]"):
        await engine.generate(ask("legal_risk", "We may change these terms at any time."))


@pytest.mark.parametrize(("artifact", "entity_head"), [("embedded-v5", "finetuned_entities"),
                                                       ("embedded-v3", "entities")])
async def test_a_mixed_batch_on_two_workers_answers_as_each_query_alone(artifact: str, entity_head: str) -> None:
    # The engine encodes a batch's sentence-vector texts in one call, longest first, while a side thread
    # drives the fine-tuned fin_ner tagger on the same workers (the frozen tagger, which shares the encoder's
    # tokenizer, runs after the encode). None of that may change an answer or its evidence.
    from routenlp_ray.config.tiers import SpecialistEngineConfig
    from routenlp_ray.engines import GenerationRequest
    from routenlp_ray.engines.specialist import SpecialistEngine
    from routenlp_ray.tasks.data import load_examples, task_file
    from tests.conftest import DATA_DIR, REPO_ROOT

    if not (DATA_DIR / "cs_response" / "train.jsonl").is_file():
        pytest.skip(f"the shipped cs_response cache reads its rows from {DATA_DIR} (set ROUTENLP_DATA)")
    tasks = ["cs_intent", "cs_response", "fin_ner", "legal_clause"]
    requests = [
        GenerationRequest(request_id=e.id, prompt=e.input, task=task, raw_input=e.input)
        for task in tasks for e in load_examples(task_file(DATA_DIR, task, "validation"), limit=4, seed=1)
    ]
    requests = requests[::2] + requests[1::2]  # tasks interleaved, as traffic arrives

    def engine(workers: int) -> SpecialistEngine:
        config = SpecialistEngineConfig(path=str(REPO_ROOT / "artifacts/specialists" / artifact),
                                        data_dir=str(DATA_DIR), encode_workers=workers)
        return SpecialistEngine(config, name="specialist", tasks=tasks)

    together = await engine(2).generate_batch(requests)
    alone_engine = engine(1)
    alone = [await alone_engine.generate(request) for request in requests]
    assert [r.text for r in together] == [r.text for r in alone]
    # Up to float rounding: a linear head's matrix product over 4 rows and over 1 may round differently.
    for a, b in zip(together, alone):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, rel=1e-5, abs=1e-6)
        assert np.concatenate(a.top_logprobs) == pytest.approx(np.concatenate(b.top_logprobs), rel=1e-5, abs=1e-6)
    assert {r.metadata["head"] for r in together} == {"label", "cache", entity_head}


def test_a_cache_built_by_reference_reads_its_rows_and_refuses_other_data(encoder, tmp_path: Path) -> None:
    rows = [{"input": "how do I reset my password", "reference": "Go to settings."},
            {"input": "cancel my order", "reference": "Sorry to see you go."}]
    data = tmp_path / "data" / "cs_response"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = AnswerCache(encoder).fit([r["input"] for r in rows], [r["reference"] for r in rows])
    source = {"path": "cs_response/train.jsonl", "input_field": "input", "answer_field": "reference"}
    cache.save(tmp_path / "head", source=source)
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["head.json"]  # no copy of the rows

    loaded = AnswerCache.load(tmp_path / "head", encoder, data_dir=tmp_path / "data")
    assert loaded.predict(["how can I reset my password?"]) == ["Go to settings."]
    with pytest.raises(ArtifactError, match="set the specialist engine's data_dir"):
        AnswerCache.load(tmp_path / "head", encoder)
    (data / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ArtifactError, match="is not the data it was built from"):
        AnswerCache.load(tmp_path / "head", encoder, data_dir=tmp_path / "data")
