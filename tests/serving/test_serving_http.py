"""The HTTP app (in-process TestClient, no sockets): same numbers as the scorer, JSON 4xx errors."""

from __future__ import annotations

import base64

import pytest
from PIL import Image
from serving_helpers import png_bytes, synthetic_image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from memeguard.serving.http import ServiceLimits, create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(scorer):
    app = create_app(scorer, ServiceLimits(max_image_bytes=200_000, max_batch=4, max_request_bytes=1_500_000))
    with TestClient(app) as test_client:
        yield test_client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_health(client, served):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert [m["name"] for m in body["models"]] == [run.name for run in served.runs]
    assert body["extractors"][0]["name"] == "grid" and body["device"] == "cpu"
    assert body["limits"]["max_batch"] == 4


def test_single_and_batch_match_the_scorer(client, served, scorer):
    paths = [served.image(i) for i in served.ids[:3]]
    texts = served.texts[:3]
    expected = scorer.score_batch(list(zip(paths, texts, strict=True)))
    single = client.post("/score", json={"image_b64": b64(paths[0].read_bytes()), "text": texts[0]})
    assert single.status_code == 200, single.text
    body = single.json()
    assert set(body) == {"proba", "label", "per_model", "latency_ms"}
    assert body["proba"] == pytest.approx(expected[0].proba, abs=1e-6)
    assert body["label"] == expected[0].label
    assert body["per_model"] == pytest.approx(expected[0].per_model, abs=1e-6)
    assert body["latency_ms"] > 0
    data_url = "data:image/png;base64," + b64(paths[1].read_bytes())
    items = [
        {"image_b64": b64(paths[0].read_bytes()), "text": texts[0]},
        {"image_b64": data_url, "text": texts[1]},
        {"image_b64": b64(paths[2].read_bytes()), "text": texts[2]},
    ]
    batch = client.post("/score", json={"items": items})
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["proba"] for r in results] == pytest.approx([e.proba for e in expected], abs=1e-6)
    assert [r["label"] for r in results] == [e.label for e in expected]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"image_b64": "!!notbase64!!", "text": "x"}, 400, "not valid base64"),
        ({"image_b64": b64(b"GIF89a but not really"), "text": "x"}, 422, "request: image is unreadable"),
        ({"image_b64": b64(png_bytes(synthetic_image(1, (40, 40)))[:200]), "text": "x"}, 422, "truncated"),
        ({"image_b64": b64(png_bytes(synthetic_image(1, (40, 40))))}, 400, "missing 'text'"),
        ({"text": "x"}, 400, "missing 'image_b64'"),
        (
            {"image_b64": b64(png_bytes(synthetic_image(1, (40, 40)))), "text": 3},
            400,
            "'text' must be a string",
        ),
        ({"items": []}, 400, "non-empty list"),
        ({"items": [{"text": "x"}] * 5}, 400, "over the batch limit of 4"),
        (
            {
                "items": [
                    {"image_b64": b64(png_bytes(synthetic_image(1, (40, 40)))), "text": "a"},
                    {"text": "b"},
                ]
            },
            400,
            "items[1]: missing 'image_b64'",
        ),
        ([1, 2], 400, "JSON object"),
    ],
)
def test_bad_requests(client, payload, status, message):
    response = client.post("/score", json=payload)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_limits_and_non_json(client):
    response = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]
    noise = Image.effect_noise((400, 400), 100).convert("RGB")  # incompressible: ~480 KB as PNG
    big = png_bytes(noise)
    assert len(big) > 200_000
    response = client.post("/score", json={"image_b64": b64(big), "text": "x"})
    assert response.status_code == 413 and "200,000-byte limit" in response.json()["detail"]
    response = client.post("/score", content=b"x" * 1_600_000, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "request body" in response.json()["detail"]
    bomb = png_bytes(Image.new("1", (8000, 6000)))
    response = client.post("/score", json={"image_b64": b64(bomb), "text": "x"})
    assert response.status_code == 422 and "decompression bomb" in response.json()["detail"]


def test_serve_command_builds_the_app_once(served, scorer, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from memeguard.cli import app as cli_app

    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(app=app, **kw))
    result = CliRunner().invoke(
        cli_app,
        [
            "serve",
            "-m",
            str(served.runs[0]),
            "-m",
            str(served.runs[1]),
            "--port",
            "8765",
            "--max-image-mb",
            "0.5",
            "--max-batch",
            "2",
            "--device",
            "cpu",
            "--threshold",
            "0.3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8765 and captured["workers"] == 1
    served_app = captured["app"]
    assert served_app.state.limits.max_image_bytes == 512 * 1024 and served_app.state.limits.max_batch == 2
    with TestClient(served_app) as test_client:
        health = test_client.get("/health").json()
        assert health["threshold"] == 0.3 and len(health["models"]) == 2
        path, text = served.image(served.ids[4]), served.texts[4]
        body = test_client.post("/score", json={"image_b64": b64(path.read_bytes()), "text": text}).json()
    expected = scorer.score(path, text)
    assert body["proba"] == pytest.approx(expected.proba, abs=1e-6)
    assert body["label"] == int(expected.proba >= 0.3)


class SlowScorer:
    """Records how many inferences overlap (the real scorer is too fast to show it)."""

    threshold = 0.5

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def describe(self):
        return {"models": [], "extractors": [], "device": "cpu", "threshold": self.threshold}

    def score_images(self, images, texts):
        import time

        from memeguard.serving.scorer import Score

        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.05)
        with self.lock:
            self.active -= 1
        return [Score(0.25, 0, {"slow": 0.25}) for _ in images]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrent_inference_is_limited(concurrency):
    from concurrent.futures import ThreadPoolExecutor

    slow = SlowScorer()
    body = {"image_b64": b64(png_bytes(synthetic_image(2, (32, 32)))), "text": "x"}
    with TestClient(create_app(slow, ServiceLimits(max_concurrency=concurrency))) as test_client:
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: test_client.post("/score", json=body), range(6)))
    assert all(r.status_code == 200 and r.json()["proba"] == 0.25 for r in responses)
    assert slow.peak <= concurrency
    if concurrency > 1:
        assert slow.peak > 1  # the limit, not the test client, is what serialised the first case


def test_openapi_documents_the_score_body(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][0]["required"] == ["image_b64", "text"]
