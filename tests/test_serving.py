from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from electra.errors import UserError
from electra.serving import ServeLimits, create_app
from electra.tasks import Example


@pytest.fixture
def classifier(finetuned_classifier: Path) -> Path:
    return finetuned_classifier


def test_health_and_predictions(classifier: Path) -> None:
    with TestClient(create_app(classifier)) as client:
        health = client.get("/health").json()
        assert health.pop("runtime") in ("pytorch cpu fp32", "pytorch cpu bfloat16")  # "auto": bf16 where fast
        assert health == {"status": "ok", "task": "tickets", "kind": "classification", "labels": ["neg", "pos"]}
        reply = client.post("/predict", json={"texts": ["the film was great", "an awful plot", "服务 好"]})
        assert reply.status_code == 200
        predictions = reply.json()["predictions"]
        assert [p["label"] for p in predictions] == ["pos", "neg", "pos"]
        assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in predictions)
        assert client.post("/predict", json={"texts": []}).json()["predictions"] == []
        assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_limits_and_malformed_requests(classifier: Path) -> None:
    limits = ServeLimits(max_examples=3, max_chars=50, max_body_bytes=2_000)
    with TestClient(create_app(classifier, limits)) as client:
        too_many = client.post("/predict", json={"texts": ["good"] * 4})
        assert too_many.status_code == 413 and "at most 3" in too_many.json()["detail"]
        too_long = client.post("/predict", json={"texts": ["good", "x" * 51]})
        assert too_long.status_code == 413 and "example 1 is longer than 50" in too_long.json()["detail"]
        body = client.post("/predict", content=json.dumps({"texts": ["a" * 3000]}), headers={"content-type": "json"})
        assert body.status_code == 413 and "2,000-byte limit" in body.json()["detail"]
        pieces = (piece.encode() for piece in ['{"texts": ["good"], "padding": "', "x" * 3000, '"}'])
        chunked = client.post("/predict", content=pieces, headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and "2,000-byte limit" in chunked.json()["detail"]  # no Content-Length
        small = (piece.encode() for piece in ['{"texts": ', '["good"]}'])
        assert client.post("/predict", content=small, headers={"content-type": "application/json"}).status_code == 200
        both = client.post("/predict", json={"texts": ["good"], "pairs": [["a", "b"]]})
        assert both.status_code == 422 and "exactly one of" in both.json()["detail"]
        pairs = client.post("/predict", json={"pairs": [["good", "film"]]})  # a single-text classifier
        assert (
            pairs.status_code == 422
            and pairs.json()["detail"] == 'this model was fine-tuned on single texts: send "texts"'
        )
        assert client.post("/predict", json={"texts": "not a list"}).status_code == 422
        tagging_input = client.post("/predict", json={"tokens": [["good"]]})
        assert tagging_input.json()["detail"] == '"tokens" is not for a classification model: send "texts" or "pairs"'
        # What JSON cannot hold made FastAPI's own 422 fail as a 500, and a body sent without its JSON header was
        # refused without saying so.
        for body in ('{"texts": [NaN]}', '{"texts": NaN}', '{"pairs": [[1e999, "a"]]}'):
            refused = client.post("/predict", content=body, headers={"content-type": "application/json"})
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][0] == "body"
        plain = client.post("/predict", content='{"texts": ["good"]}', headers={"content-type": "text/plain"})
        assert plain.status_code == 422 and "Content-Type: application/json" in plain.json()["detail"][0]["msg"]
        assert client.head("/health").status_code == 200
        json_header = {"content-type": "application/json"}
        gbk = client.post("/predict", content='{"texts": ["好"]}'.encode("gbk"), headers=json_header)
        assert gbk.status_code == 400 and "send JSON encoded as UTF-8" in gbk.json()["detail"]
        for broken in ("hello, not JSON", '{"texts": ["good"]'):
            refused = client.post("/predict", content=broken, headers=json_header)
            assert refused.status_code == 400 and refused.json()["detail"][0]["msg"].startswith("JSON decode error")
        assert client.get("/nowhere").status_code == 404 and client.get("/predict").status_code == 405


def test_a_tagger_refuses_pairs(tmp_path: Path) -> None:
    """A tagger sent "pairs" answered 200 with no predictions."""
    from electra.finetune_data import TaskHead
    from electra.tokenization import SPECIAL_TOKENS
    from tests.conftest import random_task_model

    vocab = [*SPECIAL_TOKENS, "good", "film"]
    random_task_model(tmp_path / "tagger", TaskHead("chunks", "tagging", ["O", "S-NP"]), vocab)
    with TestClient(create_app(tmp_path / "tagger", precision="fp32")) as client:
        pairs = client.post("/predict", json={"pairs": [["good", "film"]]})
        assert pairs.status_code == 422
        assert pairs.json()["detail"] == '"pairs" is not for a tagging model: send "tokens" or "texts"'
        tags = client.post("/predict", json={"tokens": [["good", "film"]]}).json()["predictions"]
        assert len(tags) == 1 and len(tags[0]["tags"]) == 2


def recorded_batch_sizes(app) -> list[int]:
    """The sizes of the batches the app's model runs from now on (a list that fills as it runs them)."""
    sizes: list[int] = []
    predictor = app.state.batcher.predictor
    original = predictor.predict

    def recording(examples: list, batch_size: int) -> list[dict]:
        sizes.append(len(examples))
        return original(examples, batch_size)

    predictor.predict = recording
    return sizes


def test_concurrent_requests_share_batches(classifier: Path) -> None:
    app = create_app(classifier, ServeLimits(batch_wait_ms=200))
    sizes = recorded_batch_sizes(app)
    texts = [f"the movie was {word}" for word in ("good", "bad", "great", "awful", "fine", "poor")]
    with TestClient(app) as client:
        alone = [client.post("/predict", json={"texts": [text]}).json()["predictions"][0] for text in texts]
        sizes.clear()
        answers: dict[int, dict] = {}

        def ask(index: int) -> None:
            answers[index] = client.post("/predict", json={"texts": [texts[index]]}).json()["predictions"][0]

        threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [answers[index]["label"] for index in range(len(texts))] == [p["label"] for p in alone]
    for index, prediction in enumerate(alone):
        assert answers[index]["probability"] == pytest.approx(prediction["probability"], abs=1e-3)
    assert sum(sizes) == len(texts) and max(sizes) > 1  # requests were answered together


def test_text_not_encodable_as_utf8_is_refused_before_the_model(classifier: Path) -> None:
    app = create_app(classifier)
    sizes = recorded_batch_sizes(app)
    headers = {"content-type": "application/json"}
    with TestClient(app) as client:
        # Valid JSON (httpx would not encode it), decoding to a lone surrogate that UTF-8 cannot hold.
        surrogate = client.post("/predict", content='{"texts": ["good film", "\\ud800"]}', headers=headers)
        assert surrogate.status_code == 422
        assert surrogate.json()["detail"].startswith("example 1 is not valid Unicode: it holds a lone surrogate")
        emoji = client.post("/predict", content='{"texts": ["good film \\ud83d\\ude00"]}', headers=headers)
        assert emoji.status_code == 200  # a surrogate pair is one well-formed character
    assert sizes == [1]  # the refused request never reached the model


def test_failing_request_does_not_fail_others_in_its_batch(classifier: Path) -> None:
    texts = ["the movie was good", "crash", "the movie was awful", "refuse", "the movie was great"]
    # A batch as large as all the requests and a long wait: the worker runs the five of them as one batch.
    app = create_app(classifier, ServeLimits(max_batch_size=len(texts), batch_wait_ms=10_000))
    batcher = app.state.batcher
    sizes: list[int] = []
    original = batcher.predictor.predict

    def failing(examples: list[Example], batch_size: int) -> list[dict]:
        sizes.append(len(examples))
        given = {example.text_a for example in examples}
        if "crash" in given:
            raise RuntimeError("the model broke")
        if "refuse" in given:
            raise UserError("this text is refused")
        return original(examples, batch_size)

    expected = original([Example(index, text_a=text) for index, text in enumerate(texts[::2])], 8)
    batcher.predictor.predict = failing
    replies: dict[int, Any] = {}
    with TestClient(app) as client:

        def ask(index: int) -> None:
            replies[index] = client.post("/predict", json={"texts": [texts[index]]})

        threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sizes == [5, 1, 1, 1, 1, 1]  # the shared batch failed, then each request ran on its own
    assert [replies[index].status_code for index in range(len(texts))] == [200, 500, 200, 422, 200]
    assert replies[1].json()["detail"].startswith("the model failed on this request (RuntimeError)")
    assert replies[3].json()["detail"] == "this text is refused"
    answers = [replies[index].json()["predictions"][0] for index in (0, 2, 4)]
    assert [answer["label"] for answer in answers] == [prediction["label"] for prediction in expected]
    for answer, prediction in zip(answers, expected, strict=True):
        assert answer["probability"] == pytest.approx(prediction["probability"], abs=1e-3)


def test_a_failure_while_gathering_a_batch_fails_its_requests_not_the_worker(classifier: Path) -> None:
    """On Python 3.10 the wait for more requests raised asyncio.TimeoutError, which the worker did not catch: it died
    and every request waited for ever. Any failure there must answer the requests it holds and keep serving."""
    app = create_app(classifier, ServeLimits(batch_wait_ms=50))
    batcher = app.state.batcher
    calls = 0

    class BrokenOnce(asyncio.Queue):
        async def get(self) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:  # the first wait for a second request
                raise RuntimeError("gathering failed")
            return await super().get()

    batcher.queue = BrokenOnce()
    with TestClient(app) as client:
        first = client.post("/predict", json={"texts": ["the movie was good"]})
        second = client.post("/predict", json={"texts": ["the movie was good"]})
    assert first.status_code == 500 and "RuntimeError" in first.json()["detail"]
    assert second.status_code == 200 and second.json()["predictions"][0]["label"] == "pos"
