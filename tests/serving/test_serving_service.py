"""The hardened service: /v1 routes (multipart and JSON), micro-batching, limits, probes, key, metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import threading
import time
import zlib

import pytest
from serving_helpers import png_bytes, synthetic_image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("multipart")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient  # noqa: E402

from memeguard.serving.batching import Job, MicroBatcher  # noqa: E402
from memeguard.serving.http import ServiceLimits, create_app  # noqa: E402
from memeguard.serving.limits import json_depth  # noqa: E402

SMALL = ServiceLimits(max_image_bytes=200_000, max_batch=4, max_request_bytes=1_500_000)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (valid CRC) followed by a tiny IDAT: costs nothing to send."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"IDAT" + zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(data) - 4)
        + data
        + struct.pack(">I", zlib.crc32(data))
    )


@pytest.fixture(scope="module")
def client(scorer):
    with TestClient(create_app(scorer, SMALL, api_key="")) as test_client:
        yield test_client


# ----------------------------------------------------------------------------- same numbers


def test_v1_multipart_and_json_match_the_scorer(client, served, scorer):
    path, text = served.image(served.ids[0]), served.texts[0]
    expected = scorer.score(path, text)
    upload = client.post(
        "/v1/score", files={"image": ("m.png", path.read_bytes(), "image/png")}, data={"text": text}
    )
    assert upload.status_code == 200, upload.text
    body = upload.json()
    assert set(body) == {"proba", "label", "per_model", "text", "text_source", "latency_ms"}
    assert body["proba"] == pytest.approx(expected.proba, abs=1e-6)
    assert body["per_model"] == pytest.approx(expected.per_model, abs=1e-6)
    assert body["text"] == text and body["text_source"] == "given"
    as_json = client.post("/v1/score", json={"image_b64": b64(path.read_bytes()), "text": text}).json()
    assert as_json["proba"] == pytest.approx(expected.proba, abs=1e-6)


def test_v1_batch_forms_match_score_batch(client, served, scorer):
    paths, texts = [served.image(i) for i in served.ids[:3]], served.texts[:3]
    expected = [s.proba for s in scorer.score_batch(list(zip(paths, texts, strict=True)))]
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]
    upload = client.post("/v1/score/batch", files=files, data={"text": texts})
    assert upload.status_code == 200, upload.text
    assert [r["proba"] for r in upload.json()["results"]] == pytest.approx(expected, abs=1e-6)
    items = [{"image_b64": b64(p.read_bytes()), "text": t} for p, t in zip(paths, texts, strict=True)]
    as_json = client.post("/v1/score/batch", json={"items": items})
    assert [r["proba"] for r in as_json.json()["results"]] == pytest.approx(expected, abs=1e-6)
    uneven = client.post("/v1/score/batch", files=files, data={"text": texts[:2]})
    assert uneven.status_code == 400 and "3 'image' parts but 2 'text' parts" in uneven.json()["detail"]


# ----------------------------------------------------------------------------- hostile input

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b'{"image_b64": "aGk=", "text": "x", "n": ' + b"9" * 5000 + b"}"
SURROGATE = b'{"image_b64": "aGk=", "text": "\\ud800 hello"}'


@pytest.mark.parametrize("route", ["/score", "/v1/score"])
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (DEEP, "nests 100,000 levels deep, over the limit of 16"),
        (HUGE_INT, "an integer of 5,000 digits is over the 32-digit limit"),
        (SURROGATE, "request: 'text' is not valid Unicode (a lone surrogate at position 0)"),
        (b'{"image_b64": "aGk=", "text": "x", "v": NaN}', "NaN is not allowed"),
    ],
)
def test_hostile_json_gets_a_400_not_a_500(client, route, body, message):
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_pixel_budgets_are_checked_from_the_header(client):
    started = time.perf_counter()
    eight = [("image", (f"{k}.png", png_header_only(1, 39_000_000), "image/png")) for k in range(4)]
    response = client.post("/v1/score/batch", files=eight, data={"text": ["x"] * 4})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == (
        "items[0]: image is 1x39000000 pixels, over the 16,000,000-pixel limit (decompression bomb?)"
    )
    assert time.perf_counter() - started < 5.0  # header only: nothing was decoded
    three = [{"image_b64": b64(png_header_only(4000, 4000)), "text": "x"}] * 3
    response = client.post("/v1/score/batch", json={"items": three})
    assert response.status_code == 413
    assert "images total 48,000,000 pixels, over the 40,000,000 budget" in response.json()["detail"]


def test_body_limits_while_streaming(client):
    declared = client.post(
        "/v1/score", content=b"x" * 1_600_000, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413 and "1,600,000 bytes is over the 1,500,000-byte limit" in declared.text

    def chunks():
        for _ in range(40):
            yield b"x" * 50_000

    streamed = client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "over the 1,500,000-byte limit" in streamed.json()["detail"]
    files = {"image": ("big.png", b"\x89PNG" + b"0" * 300_000, "image/png")}
    big = client.post("/v1/score", files=files)
    assert big.status_code == 413 and "300,004 bytes, over the 200,000-byte limit" in big.json()["detail"]


def test_stalled_body_is_cut():
    from memeguard.serving.edge import BodyGuard, InflightBytes

    async def stalled():
        await asyncio.sleep(5)

    async def run():
        guard = BodyGuard(stalled, ServiceLimits(body_idle_s=0.1), InflightBytes(1000))
        started = time.perf_counter()
        with pytest.raises(Exception) as caught:
            await guard.receive()
        return caught.value, time.perf_counter() - started

    error, seconds = asyncio.run(run())
    assert error.status == 408 and "stalled" in error.message and seconds < 1.0


def test_missing_text_without_ocr_is_a_clear_422():
    fake = FakeScorer()
    with TestClient(create_app(fake, api_key="")) as test_client:
        image = png_bytes(synthetic_image(3, (32, 32)))
        response = test_client.post("/v1/score", files={"image": ("m.png", image, "image/png")})
    assert response.status_code == 422
    assert (
        response.json()["detail"] == "request: no 'text' given, and this server cannot read text from images"
    )


# ----------------------------------------------------------------------------- batching and queue


class FakeScorer:
    """Records each batch; ``gate`` (when set) holds scoring until the test releases it."""

    threshold = 0.5

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate, self.batches, self.entered = delay, gate, [], threading.Event()

    def describe(self):
        extractor = {"name": "butd", "settings": {"weights": "/secret/butd.pth", "boxes": [36]}}
        return {
            "models": [{"name": "fake", "path": "/secret/run"}],
            "extractors": [extractor],
            "device": "cpu",
        }

    def score_images(self, images, texts):
        from memeguard.serving.scorer import Score

        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        self.batches.append(len(images))
        return [Score(0.75, 1, {"fake": 0.75}) for _ in images]


def test_concurrent_requests_share_batches():
    from concurrent.futures import ThreadPoolExecutor

    fake = FakeScorer(delay=0.1)
    body = {"image_b64": b64(png_bytes(synthetic_image(2, (32, 32)))), "text": "x"}
    with TestClient(create_app(fake, ServiceLimits(max_batch=8, max_wait_ms=20), api_key="")) as test_client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: test_client.post("/v1/score", json=body), range(8)))
        metrics = test_client.get("/metrics").text
    assert all(r.status_code == 200 and r.json()["proba"] == 0.75 for r in responses)
    assert sum(fake.batches) == 8 and max(fake.batches) > 1 and len(fake.batches) < 8
    assert f"memeguard_batch_memes_count {len(fake.batches)}.0" in metrics


def test_full_queue_is_a_503_with_retry_after():
    gate = threading.Event()
    fake = FakeScorer(gate=gate)
    app = create_app(fake, ServiceLimits(max_queue=1, max_wait_ms=0), api_key="")
    body = {"image_b64": b64(png_bytes(synthetic_image(2, (32, 32)))), "text": "x"}
    with TestClient(app) as test_client:
        results = []
        first = threading.Thread(target=lambda: results.append(test_client.post("/v1/score", json=body)))
        first.start()
        assert fake.entered.wait(10)
        second = threading.Thread(target=lambda: results.append(test_client.post("/v1/score", json=body)))
        second.start()
        deadline = time.monotonic() + 10
        while app.state.batcher.queued_memes < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = test_client.post("/v1/score", json=body)
        gate.set()
        first.join(10)
        second.join(10)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "the queue is full (1 memes waiting)" in refused.json()["detail"]
    assert [r.status_code for r in results] == [200, 200]


def test_close_drains_every_queued_job():
    def score_jobs(jobs):
        time.sleep(0.02)
        return [[len(job.items)] for job in jobs]

    async def run():
        batcher = MicroBatcher(score_jobs, 2, 10**9, 0.0, 100, 10**9, workers=1)
        tasks = [asyncio.create_task(batcher.submit(Job([k], 1, 1))) for k in range(7)]
        await asyncio.sleep(0)
        await batcher.close()
        return [task.result() for task in tasks]

    assert asyncio.run(run()) == [[1]] * 7


# ----------------------------------------------------------------------------- probes, key, docs, log


def test_probes_show_no_paths_and_the_key_guards_scoring(served):
    fake = FakeScorer()
    image = b64(png_bytes(synthetic_image(2, (32, 32))))
    with TestClient(create_app(fake, api_key="s3cret")) as test_client:
        assert test_client.get("/healthz").json() == {"status": "alive"}
        ready = test_client.get("/readyz").json()
        assert ready == {"status": "ready", "models": ["fake"], "threshold": 0.5, "reads_text": False}
        health = test_client.get("/health").json()
        assert "/secret" not in json.dumps(health) and health["models"] == [{"name": "fake"}]
        assert health["extractors"] == [{"name": "butd", "settings": {"weights": "butd.pth", "boxes": [36]}}]
        refused = test_client.post("/v1/score", json={"image_b64": image, "text": "x"})
        assert refused.status_code == 401 and "API key" in refused.json()["detail"]
        wrong = test_client.post(
            "/score", json={"image_b64": image, "text": "x"}, headers={"X-API-Key": "s3cre"}
        )
        assert wrong.status_code == 401
        assert test_client.get("/metrics").status_code == 401
        good = test_client.post(
            "/v1/score", json={"image_b64": image, "text": "x"}, headers={"X-API-Key": "s3cret"}
        )
        bearer = {"Authorization": "Bearer s3cret"}
        assert good.status_code == 200 and test_client.get("/metrics", headers=bearer).status_code == 200
        assert '<input id="file" type="file"' in test_client.get("/").text


def test_docs_can_be_turned_off_and_openapi_is_exact(client):
    with TestClient(create_app(FakeScorer(), docs=False, api_key="")) as test_client:
        assert test_client.get("/docs").status_code == 404
        assert test_client.get("/openapi.json").status_code == 404
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/v1/score"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ScoreResponse"
    )
    assert post["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )


def test_one_access_line_per_request_with_its_id(client, caplog):
    with caplog.at_level(logging.INFO, logger="memeguard.access"):
        response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "memeguard.access"]
    assert len(lines) == 1 and lines[0]["request_id"] == "abc-123"
    assert lines[0]["path"] == "/healthz" and lines[0]["status"] == 200


@pytest.mark.parametrize(
    "text", ['{"a": [1, {"b": "[[[["}]}', "[[[]],[[[]]]]", '{"s": "\\"]]]{{{"}', "3", '[{"a": {}}]']
)
def test_json_depth_against_the_parsed_value(text):
    def depth(value):
        if isinstance(value, list):
            return 1 + max((depth(v) for v in value), default=0)
        if isinstance(value, dict):
            return 1 + max((depth(v) for v in value.values()), default=0)
        return 0

    assert json_depth(text.encode()) == depth(json.loads(text))


def test_inflight_budget_is_shared_and_given_back():
    from memeguard.serving.edge import BodyGuard, InflightBytes

    def chunk(size):
        async def receive():
            return {"type": "http.request", "body": b"x" * size, "more_body": True}

        return receive

    async def run():
        inflight = InflightBytes(1000)
        first = BodyGuard(chunk(600), ServiceLimits(), inflight)
        await first.receive()
        second = BodyGuard(chunk(600), ServiceLimits(), inflight)
        with pytest.raises(Exception) as caught:
            await second.receive()
        held_during = inflight.held
        second.release()
        first.release()
        return caught.value, held_during, inflight.held

    error, held_during, held_after = asyncio.run(run())
    assert (
        error.status == 503 and error.headers == {"Retry-After": "1"} and "too much at once" in error.message
    )
    assert held_during == 600 and held_after == 0


def test_serve_options_reach_the_app(served, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from memeguard.cli import app as cli_app

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(app=app, **kw))
    base = ["serve", "-m", str(served.runs[0]), "--device", "cpu"]
    options = ["--max-request-mb", "2", "--max-wait-ms", "0", "--max-queue", "9", "--no-docs"]
    result = CliRunner().invoke(cli_app, [*base, *options])
    assert result.exit_code == 0, result.output
    limits = captured["app"].state.limits
    assert limits.max_request_bytes == 2 * 1024 * 1024 and limits.max_wait_ms == 0 and limits.max_queue == 9
    assert captured["timeout_graceful_shutdown"] > 0 and captured["access_log"] is False
    assert captured["log_config"]["loggers"]["memeguard.access"]["level"] == "INFO"
    with TestClient(captured["app"]) as test_client:
        assert test_client.get("/docs").status_code == 404
    bad = CliRunner().invoke(cli_app, [*base, "--max-queue", "0"])
    assert bad.exit_code == 1 and str(bad.exception) == "service limit max_queue must be >= 1, got 0"
