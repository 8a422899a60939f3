"""Feedback reaching another router replica than the one that answered (two replicas is the default)."""

from __future__ import annotations

from pathlib import Path

from routenlp_ray.config import parse_config
from routenlp_ray.engines import GenerationRequest, GenerationResult
from routenlp_ray.serving import ChatCompletionRequest, FeedbackRequest, RouterService
from routenlp_ray.telemetry import QueryLog, read_records
from routenlp_ray.telemetry.querylog import find_record
from tests.conftest import small_config_dict


async def cheap(request: GenerationRequest) -> GenerationResult:
    return GenerationResult("card_arrival", [-0.1], prompt_tokens=10, completion_tokens=1, latency_ms=1.0)


async def test_a_second_replica_matches_feedback_through_the_shared_query_log(tmp_path: Path, replay_file: Path) -> None:
    config = parse_config(small_config_dict(tmp_path, replay_file, cascade={"default_threshold": 0.5}))
    # Two router replicas: each its own service and log writer over one log folder.
    first = RouterService(config, {"cheap": cheap, "frontier": cheap}, query_log=QueryLog(config.storage, "first"))
    second = RouterService(config, {"cheap": cheap, "frontier": cheap}, query_log=QueryLog(config.storage, "second"))
    body = ChatCompletionRequest.model_validate(
        {"model": "routenlp/cs_intent", "messages": [{"role": "user", "content": "where is my card?"}]}
    )
    answer = await first.chat(body)
    await second.feedback(FeedbackRequest.model_validate({"response_id": answer["id"], "accepted": False}))
    for service in (first, second):
        assert service.query_log is not None
        service.query_log.close()
    feedback = {r["response_id"]: r for r in read_records(config.storage.log_uri, "feedback")}
    assert feedback[answer["id"]]["matched"] is True
    assert (feedback[answer["id"]]["task"], feedback[answer["id"]]["answered_by"]) == ("cs_intent", "cheap")


def test_find_record_reads_the_newest_segments_first(tmp_path: Path) -> None:
    folder = tmp_path / "log" / "queries"
    folder.mkdir(parents=True)
    (folder / "part-20261125T100000-a.jsonl").write_text('{"id": "q1", "v": 1}\n{"id": "q2", "v": 1}\n')
    (folder / "part-20261125T110000-b.jsonl").write_text('{"id": "q2", "v": 2}\n')
    assert find_record(str(tmp_path / "log"), "q2") == {"id": "q2", "v": 2}
    assert find_record(str(tmp_path / "log"), "q1") == {"id": "q1", "v": 1}
    assert find_record(str(tmp_path / "log"), "q1", max_segments=1) is None
    assert find_record(str(tmp_path / "log"), "q3") is None
