"""Explanations of scores: ``explain_image`` through the scorer, the overlay PNG, ``memeguard explain`` and
``explain=true`` over HTTP."""

from __future__ import annotations

import base64
import io
import json
import math
import sys

import numpy as np
import pytest
from PIL import Image
from serving_helpers import runs_with_dev_predictions
from typer.testing import CliRunner

from memeguard.cli import app
from memeguard.errors import ConfigError, DataError
from memeguard.models.explanation import (
    MAX_ALPHA,
    NEGATIVE_RGB,
    POSITIVE_RGB,
    Explanation,
    ModelExplanation,
    RegionAttribution,
    WordAttribution,
    region_heat,
    render_png,
    token_words,
)
from memeguard.models.tokenization import load_tokenizer
from memeguard.serving.explain import explain_image
from memeguard.serving.scorer import load_image

pytest.importorskip("captum")
STEPS = 32


@pytest.fixture(scope="module")
def explained(served, scorer):
    meme_id, text = served.ids[1], served.texts[1]
    image = load_image(served.image(meme_id))
    return image, text, explain_image(scorer, image, text, steps=STEPS)


def test_each_model_is_attributed_completely_and_scores_as_the_scorer(explained, scorer):
    image, text, explanation = explained
    score = scorer.score_images([image], [text])[0]
    assert [m.model for m in explanation.models] == list(score.per_model)
    for member in explanation.models:
        # The explained logit is the scored one: the same extractor, rounding and processor.
        assert 1 / (1 + math.exp(-member.logit)) == pytest.approx(score.per_model[member.model], abs=1e-6)
        total = sum(t.attribution for t in member.tokens) + sum(r.attribution for r in member.regions)
        change = member.logit - member.baseline_logit
        assert abs(change) > 1e-2
        assert total - change == pytest.approx(member.delta, abs=1e-5)
        assert abs(member.delta) < 1e-2 * abs(change)
        assert member.steps == STEPS and member.method == "integrated_gradients"


def test_words_regions_and_the_ensemble(explained, scorer):
    image, text, explanation = explained
    words = text.split()
    assert [w.word for w in explanation.words] == words
    records = scorer.member_batches([image], [text])[0][1]
    weights = {m.model: m.weight for m in explanation.models}
    assert sum(weights.values()) == pytest.approx(1.0)
    for member in explanation.models:
        for k, word in enumerate(member.words):  # a word is the sum of its pieces
            pieces = [t.attribution for t in member.tokens if t.word == k]
            assert pieces and word.attribution == pytest.approx(sum(pieces), abs=1e-9)
        assert member.tokens[0].token == "[CLS]" and member.tokens[0].attribution == 0.0
        assert member.tokens[-1].token == "[SEP]" and member.tokens[-1].attribution == 0.0
        np.testing.assert_allclose([r.box for r in member.regions], records[0].boxes, atol=1e-4)
    for k, word in enumerate(explanation.words):
        expected = sum(m.weight * m.words[k].attribution for m in explanation.models)
        assert word.attribution == pytest.approx(expected, abs=1e-9)
    assert explanation.image_size == [image.width, image.height]


def test_token_words_follow_whitespace_words():
    tokenizer = load_tokenizer("bert-base-uncased")
    text = "unbelievable, my dog's car!"
    ids = tokenizer(text)["input_ids"]
    owners = token_words(tokenizer, text, ids, 128)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    words = text.split()
    assert owners[0] is None and owners[-1] is None  # [CLS], [SEP]
    by_word = {
        k: "".join(p.removeprefix("##") for p, o in zip(pieces, owners, strict=True) if o == k)
        for k in range(4)
    }
    assert by_word == {k: word.lower() for k, word in enumerate(words)}
    # ids that are not the text's own (OSCAR's tags after it) belong to no word
    assert token_words(tokenizer, text, [*ids, 2003, 102], 128)[-2:] == [None, None]


def test_region_heat_spreads_each_attribution_over_its_box():
    heat = region_heat([[0, 0, 4, 2], [2, 0, 6, 4], [0, 0, 10, 10]], [8.0, -4.0, 1.0], (10, 10))
    assert heat.shape == (10, 10)
    assert heat.sum() == pytest.approx(8.0 - 4.0 + 1.0)
    assert heat[0, 0] == pytest.approx(8 / 8 + 1 / 100)
    assert heat[0, 3] == pytest.approx(8 / 8 - 4 / 16 + 1 / 100)
    assert heat[3, 5] == pytest.approx(-4 / 16 + 1 / 100)
    doubled = region_heat([[0, 0, 5, 5]], [1.0], (20, 20), scale=2.0)  # boxes in the scaled image
    assert doubled[:10, :10].sum() == pytest.approx(1.0) and doubled[10:, :].sum() == 0


def _explanation(boxes, values, words) -> Explanation:
    member = ModelExplanation(
        model="m",
        weight=1.0,
        steps=4,
        logit=1.0,
        baseline_logit=0.0,
        delta=0.0,
        tokens=[],
        words=[WordAttribution(word=w, attribution=a) for w, a in words],
        regions=[RegionAttribution(box=b, attribution=v) for b, v in zip(boxes, values, strict=True)],
    )
    return Explanation(text="", image_size=[400, 200], steps=4, words=member.words, models=[member])


def test_png_is_red_where_a_region_pushes_up_and_blue_where_down():
    image = Image.new("RGB", (400, 200), (128, 128, 128))
    explanation = _explanation(
        [[0, 0, 100, 100], [300, 100, 400, 200]], [2.0, -2.0], [("dog", 1.0), ("car", -0.5), ("so", 0.0)]
    )
    png = Image.open(io.BytesIO(render_png(image, explanation))).convert("RGB")
    assert png.width == 400 and png.height > 200  # the words go below the meme
    red, blue, plain = png.getpixel((50, 50)), png.getpixel((350, 150)), png.getpixel((200, 50))
    alpha = MAX_ALPHA / 255  # both boxes are at the peak magnitude

    def blend(colour):
        return [128 * (1 - alpha) + c * alpha for c in colour]

    assert list(red) == pytest.approx(blend(POSITIVE_RGB), abs=1.5)
    assert list(blue) == pytest.approx(blend(NEGATIVE_RGB), abs=1.5)
    assert plain == (128, 128, 128)
    words_strip = np.asarray(png)[200:]
    assert (words_strip[..., 0] > 200).any() and (words_strip[..., 2] > 200).any()


def test_png_of_a_huge_meme_is_bounded():
    image = Image.new("RGB", (4000, 1000), (128, 128, 128))
    png = Image.open(io.BytesIO(render_png(image, _explanation([[0, 0, 4000, 1000]], [1.0], [("a", 1.0)]))))
    assert png.width == 1024


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_writes_json_and_png_per_meme(served, scorer, tmp_path):
    paths = [served.image(meme_id) for meme_id in served.ids[:2]]
    out = tmp_path / "explained"
    args = ["explain", *paths, "--out", out, "--steps", "8", "--ocr", "never", "--device", "cpu"]
    result = run_cli(*args, *[a for run in served.runs for a in ("-m", run)])
    # Several memes are read by OCR; --ocr never refuses that with one line.
    assert isinstance(result.exception, DataError) and "no text given" in str(result.exception)
    assert not out.exists() or not any(out.iterdir())
    one = ["explain", paths[0], "--out", out, "--steps", "8", "--text", served.texts[0], "--device", "cpu"]
    result = run_cli(*one, *[a for run in served.runs for a in ("-m", run)])
    assert result.exit_code == 0, result.output
    stem = paths[0].stem
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.explain.json", f"{stem}.explain.png"]
    record = json.loads((out / f"{stem}.explain.json").read_text())
    expected = scorer.score(paths[0], served.texts[0])
    assert record["proba"] == pytest.approx(expected.proba, abs=1e-9)
    assert record["text"] == served.texts[0] and record["steps"] == 8
    assert {m["model"] for m in record["models"]} == set(expected.per_model)
    Image.open(out / f"{stem}.explain.png").verify()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--steps", "0"], "steps must be in 1..1024"), (["--steps", "5000"], "steps must be in 1..1024")],
)
def test_cli_refuses_bad_steps_in_one_line(served, tmp_path, extra, message):
    result = run_cli("explain", served.image(served.ids[0]), "-m", served.runs[0], "--out", tmp_path, *extra)
    assert isinstance(result.exception, ConfigError) and message in str(result.exception)


def test_two_memes_with_one_stem_are_refused(served, scorer, tmp_path):
    from memeguard.serving.explain import explain_files

    copy = tmp_path / "other" / served.image(served.ids[0]).name
    copy.parent.mkdir()
    copy.write_bytes(served.image(served.ids[0]).read_bytes())
    with pytest.raises(ConfigError, match="would both write"):
        explain_files(scorer, [served.image(served.ids[0]), copy], tmp_path / "out", steps=4)
    assert not (tmp_path / "out").exists()


def test_missing_captum_is_one_line(monkeypatch, scorer, served):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ConfigError, match=r"pip install 'memeguard\[explain\]'"):
        explain_image(scorer, load_image(served.image(served.ids[0])), "a dog", steps=4)


# ------------------------------------------------------------------------------------------ HTTP


@pytest.fixture(scope="module")
def client(scorer):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from memeguard.serving.http import create_app

    with TestClient(create_app(scorer, api_key="")) as test_client:
        yield test_client


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_http_explain_three_ways(client, served, scorer):
    path, text = served.image(served.ids[2]), served.texts[2]
    plain = client.post("/v1/score", json={"image_b64": _b64(path.read_bytes()), "text": text})
    assert plain.status_code == 200 and "explanation" not in plain.json()
    answers = [
        client.post("/v1/score?explain=true", json={"image_b64": _b64(path.read_bytes()), "text": text}),
        client.post("/v1/score", json={"image_b64": _b64(path.read_bytes()), "text": text, "explain": True}),
        client.post(
            "/v1/score",
            files={"image": ("m.png", path.read_bytes(), "image/png")},
            data={"text": text, "explain": "true"},
        ),
    ]
    expected = explain_image(scorer, load_image(path), text, steps=32)
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["proba"] == pytest.approx(plain.json()["proba"], abs=1e-9)
        explanation = body["explanation"]
        assert [w["word"] for w in explanation["words"]] == text.split()
        for got, want in zip(explanation["models"], expected.models, strict=True):
            assert got["logit"] == pytest.approx(want.logit, abs=1e-6)
            assert [r["attribution"] for r in got["regions"]] == pytest.approx(
                [r.attribution for r in want.regions], abs=1e-5
            )
        Image.open(io.BytesIO(base64.b64decode(explanation["png_b64"]))).verify()


def test_http_explain_errors_are_one_line(client, served):
    path = served.image(served.ids[0])
    bad = client.post("/v1/score?explain=maybe", json={"image_b64": _b64(path.read_bytes()), "text": "a"})
    assert bad.status_code == 400 and "'explain' must be true or false" in bad.json()["detail"]
    batch = client.post(
        "/v1/score/batch?explain=true", json={"items": [{"image_b64": _b64(path.read_bytes())}]}
    )
    assert batch.status_code == 400 and "one meme at a time" in batch.json()["detail"]


def test_openapi_describes_explain(client):
    schema = client.get("/openapi.json").json()
    route = schema["paths"]["/v1/score"]["post"]
    assert any(p["name"] == "explain" and p["in"] == "query" for p in route["parameters"])
    body = route["requestBody"]["content"]
    assert "explain" in body["application/json"]["schema"]["properties"]
    assert "explain" in body["multipart/form-data"]["schema"]["properties"]
    components = schema["components"]["schemas"]
    assert {"png_b64", "words", "models"} <= set(components["ExplanationResponse"]["properties"])
    assert "explanation" in components["ScoreResponse"]["properties"]


def test_synthetic_ground_truth_boxes_and_noun():
    """The benchmark's truth: each salient object's reach (a star's points reach 1.2 radii) and the noun."""
    from memeguard.data.synth import render_picture, salient_truth

    record = {
        "size": [150, 80],
        "visual": 1,
        "text_attr": 1,
        "objects": [
            {"shape": "star", "centre": [100.0, 50.0], "radius": 20.0},
            {"shape": "circle", "centre": [10.0, 10.0], "radius": 15.0},
        ],
    }
    truth = salient_truth(record, "when the Bus, finally arrives")
    assert truth.boxes == ((76.0, 26.0, 124.0, 74.0), (0.0, 0.0, 25.0, 25.0))
    assert truth.noun == "bus" and truth.visual == 1 and truth.text_attr == 1
    assert salient_truth(record, "a dog").noun is None  # an animal is not in the vehicle group
    # On a rendered picture the object's box is inside the image and holds its centre.
    from memeguard.data.synth import _ImagePlan

    image, info = render_picture(_ImagePlan(key=0, visual=0, seed=11))
    real = salient_truth({"size": list(image.size), "visual": 0, "text_attr": 0, **info}, "")
    for (x1, y1, x2, y2), obj in zip(real.boxes, info["objects"], strict=True):
        assert (
            0 <= x1 < obj["centre"][0] < x2 <= image.width and 0 <= y1 < obj["centre"][1] < y2 <= image.height
        )


def test_a_bundle_explains_like_its_runs(served, scorer, explained, tmp_path):
    """A bundle (its fp32 safetensors members) gives the explanation of the runs it was exported from."""
    from memeguard.serving.bundle import export_bundle, load_scorer

    image, text, expected = explained
    results = scorer.score_batch(
        [(served.image(i), t) for i, t in zip(served.ids, served.texts, strict=True)]
    )
    runs = runs_with_dev_predictions(served.runs, served.ids, results, tmp_path)
    export_bundle(runs, tmp_path / "bundle", data_dir=served.data_dir)
    got = explain_image(load_scorer(tmp_path / "bundle", device="cpu"), image, text, steps=STEPS)
    for mine, theirs in zip(got.models, expected.models, strict=True):
        assert mine.logit == pytest.approx(theirs.logit, abs=1e-6)
        assert [r.attribution for r in mine.regions] == pytest.approx(
            [r.attribution for r in theirs.regions], abs=1e-6
        )
        assert [t.attribution for t in mine.tokens] == pytest.approx(
            [t.attribution for t in theirs.tokens], abs=1e-6
        )


def test_a_second_explanation_meanwhile_is_told_to_retry(client, served, monkeypatch):
    """Explanations run one at a time outside the micro-batcher: a concurrent one gets 503 + Retry-After,
    while plain scores still go through."""
    import threading

    import memeguard.serving.http as http

    started, release = threading.Event(), threading.Event()

    def slow(scorer, meme, text):
        started.set()
        release.wait(30)
        return http.ExplanationResponse(
            text=text, image_size=[1, 1], steps=1, words=[], models=[], png_b64=""
        )

    monkeypatch.setattr(http, "explain_meme", slow)
    body = {"image_b64": _b64(served.image(served.ids[0]).read_bytes()), "text": "a dog"}
    answers = {}
    first = threading.Thread(
        target=lambda: answers.setdefault("first", client.post("/v1/score?explain=1", json=body))
    )
    first.start()
    assert started.wait(30)
    second = client.post("/v1/score?explain=true", json=body)
    plain = client.post("/v1/score", json=body)
    release.set()
    first.join(30)
    assert (
        second.status_code == 503
        and second.headers["Retry-After"]
        and "explanation" in second.json()["detail"]
    )
    assert plain.status_code == 200 and "explanation" not in plain.json()
    assert answers["first"].status_code == 200 and answers["first"].json()["explanation"]["steps"] == 1
    # the gate is free again
    assert client.post("/v1/score?explain=true", json=body).json()["explanation"]["steps"] == 1
