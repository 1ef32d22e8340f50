"""Faithfulness of explanations on the synthetic set, where the truth is known.

The synthetic label is (colour family of the salient object) XOR (group of the caption's target noun), so a
faithful explanation of a model that learned the rule points at the object and the noun. On the default set
that is not quite the truth: the scene's light is tinted with the colour family too (``memeguard.data.synth``;
it shortens the training plateau), so every grid cell carries it. ``--untinted`` generates the same memes
(same captions, objects, places and labels) with neutral light (``generate_synthetic(tinted_light=False)``),
where the object alone carries the family. The benchmark trains ``visualbert-tiny`` on grid features (as
``benchmarks/learning.py``, noise-free set unless ``--label-noise``), explains every meme of ``--splits``
through the scorer (``memeguard.serving.explain``: integrated gradients, ``--steps``; ``--method``) and
measures, each against a baseline from the same run:

* **deletion**: replacing the k words (regions) with the largest attribution toward the model's decision by
  their "absent" values ([PAD] embeddings; zero features, the store's mean for grid) moves the logit against
  the decision by ``top`` on average; doing so to k random words (regions, ``--draws`` draws per meme) by
  ``random``. The ratio ``top / random`` is > 1 for a faithful explanation (n/a: random moves < 0.001);
* **localisation**, on correctly scored memes: how often the top region (largest attribution toward the
  decision) lies on the salient object (at least half its box inside the object's bounding box; a collage
  has two), against a region drawn at random; how often the overlay's hottest pixel lies in the object's
  box (what a moderator sees: the PNG's heat, each region's attribution spread over its box and summed
  where boxes overlap; a pixel drawn at random among the hottest), against the share of the image inside
  the box; how often the top word is the noun, against 1 / number of words. Rates carry +- the half-width
  of their 95 % interval.

    .venv/bin/python benchmarks/explain.py --work /tmp/memeguard-explain --untinted \
        --splits dev_seen test_seen test_unseen [--method joint|modalities|references|per-modality]
        [--label-noise 0.03] [--train-seed 1] [--n 2000 --steps 32 --k 1 3 10]

Measured 2026-12-02 (n 2000, seed 0, 577 memes of dev_seen + test_seen + test_unseen, 32 steps, joint
baseline = the product's; 2 shared CPU cores at load 7-11; each run 35-50 s CPU, training ~65 s CPU):

  correctly scored hateful memes        top region on object  hottest pixel on object  top word = noun
    chance                              0.12                  0.15                     0.09
  tinted (default) set                  0.26 +- 0.06 (n 246)  0.23 +- 0.05             0.25
  untinted set                          0.59 +- 0.07 (n 183)  0.53 +- 0.07             0.84
    cool object / warm object           0.96 / 0.18           0.90 / 0.12              0.85 / 0.82
  untinted, training seed 1             0.53 +- 0.06 (n 246)  0.48 +- 0.06             0.53
    cool object / warm object           1.00 / 0.06           0.92 / 0.04              0.06 / 1.00
  untinted, label noise 0.03            0.82 +- 0.06 (n 167)  0.71 +- 0.07             0.80
    cool object / warm object           0.91 / 0.72           0.83 / 0.58              0.83 / 0.77
  untinted, --method modalities, 128    0.60 +- 0.07          0.55 +- 0.07             0.80
    cool object / warm object           0.99 / 0.16           0.90 / 0.17              0.75 / 0.85
  untinted, --method references, 128    0.38 +- 0.07          0.38 +- 0.07             0.72
    16 references, 256 steps            0.62 +- 0.07          0.62 +- 0.07             0.90
    cool object / warm object           0.99 / 0.21           0.95 / 0.26              0.98 / 0.80
  untinted, --method per-modality       0.64 +- 0.07          0.55 +- 0.07             0.82

  deletion, top-k / random-k drop       words k=1    k=3    k=10    regions k=1       k=3     k=10
  tinted (default) set                  10.3x        3.5x   1.4x    n/a (all < 0.04)  n/a     n/a
  untinted set                          8.4x         3.9x   2.1x    0.56 / 0.002      33x     12x
  untinted, training seed 1             11.0x        3.5x   1.4x    0.07 / 0.001      60x     14x
  untinted, label noise 0.03            8.9x         4.4x   2.0x    16x               14x     7.7x

(benign memes, untinted set, joint: region 0.45, pixel 0.47, noun 0.38; modalities 128 steps: 0.56, 0.56.)

What the numbers say:

* The data premise was the problem on the default set: with the colour family in the light, the noise-free
  model saturates (logits about +-9.3), scores the joint baseline (no noun, mean regions) +9.3 like every
  hateful meme, so IG has nothing to distribute to a hateful meme (top region 0.26) and deleting a region
  moves nothing (the light in every other cell still says the family). With the object alone carrying it,
  the same method and model size put the top region on the object for 0.59 (0.53 and 0.82 for another
  training seed and the usual label noise) of correctly scored hateful memes, ~5x chance, and every
  deletion ratio is > 1 (regions 12-60x at k = 3, 10).
* The misses are not an artefact of the metric (a quadrant can never be "on" the object): on the untinted
  set 56 of the 75 missed memes' top region is a 6x6 cell that does not touch the object's box at all, and
  71 of the 75 are warm-object memes. The rate is two rates: 0.96 for cool-object hateful memes, 0.18 for
  warm ones. Against the joint baseline (no noun, mean regions: logit -5.4, read like a warm, animal meme)
  a hateful cool object + animal meme differs by its object (the object's cells sum to +6.9 of the +10.3
  change), a hateful warm object + vehicle meme by its noun (text +8.5; the object's cells -1.4, away
  from hateful). Not an artefact of the one baseline: from 16 train memes (half of them cool) the warm rate
  stays 0.21. The model reads "a cool object somewhere", and "warm" as its absence, which has no place
  in the picture: faithful to the model, not what a moderator expects. Training seed 1 shows it in its
  purest form (1.00 / 0.06, the noun 0.06 / 1.00); the less saturated label-noise model uses both (0.91 /
  0.72).
* The hottest pixel lands on the object a little less often than the top region (0.53 vs 0.59): a cell
  counts as "on" with half its box inside, while its pixels score only the share that is inside.
* Other paths and baselines: ``modalities`` (restore one modality at a time, both orders averaged: complete,
  Shapley over the two modalities) matches the straight path on hateful memes and helps benign ones, but
  needs ~4x the steps for the same delta (32 steps: median |delta| / change 0.44 against 0.003); expected
  gradients (``references``) localise worse from 4 train memes (0.38) and as well from 16 (0.62) at 8x the
  cost and a larger delta (median 0.13 at 16 points a path); ``per-modality`` is within the interval and
  not complete (its words and regions do not sum to one logit change). None moves the warm-object rate, so
  the product keeps the straight path from the joint baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import prepare  # noqa: E402 - the learning benchmark's data + grid features

MODEL = "visualbert-tiny"
COVER = 0.5  # a region is "on the object" when at least this share of its box is inside the object's box
EXPLAINED = 1.0  # memes whose logit differs from the baseline's by more than this have something to explain


@dataclass
class Tally:
    """Per-k deletion drops and, per group of memes, the localisation hits, accumulated over memes."""

    top: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    random: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    # group -> [(top region on the object, chance of a random region, hottest overlay pixel on the object,
    #            share of the image inside the object boxes, top word is the noun, 1 / words)]
    located: dict[str, list[tuple[float, ...]]] = field(default_factory=dict)
    deltas: list[float] = field(default_factory=list)  # |IG delta| / |logit - baseline logit|


def reference_inputs(scorer, data: Path, count: int, seed: int):
    """``count`` train memes drawn with ``seed``, as (attribution inputs, keep mask) of the one model."""
    from memeguard.data.hm import load_jsonl
    from memeguard.models.attribution import keep_mask
    from memeguard.serving.scorer import load_image

    train_memes = load_jsonl(data / "train.jsonl")
    chosen = [train_memes[i] for i in np.random.default_rng(seed + 1).choice(len(train_memes), count, False)]
    images = [load_image(data / meme.img, str(meme.img)) for meme in chosen]
    ((member, _, batch),) = scorer.member_batches(images, [meme.text for meme in chosen])
    keep = keep_mask(batch, member.processor.tokenizer.all_special_ids)
    return member.model.attribution_inputs(batch), keep


def train(work: Path, data: Path, store: Path, seed: int) -> Path:
    """The tiny model, trained once per work folder (a finished run is reused)."""
    from memeguard.names import DONE_FILE
    from memeguard.training import TINY_DEFAULTS, TrainConfig, finetune

    out = work / "runs" / f"{MODEL}-seed{seed}"
    if not (out / DONE_FILE).is_file():
        cfg = TrainConfig(
            model=MODEL,
            features=store,
            data_dir=data,
            out_dir=out,
            train_split="train",
            predict_splits=("dev_seen",),
            seed=seed,
            device="cpu",
            progress=False,
            **TINY_DEFAULTS,
        )
        finetune(cfg)
    return out


def covered(box: np.ndarray, truth_boxes: tuple) -> bool:
    """At least ``COVER`` of ``box`` lies inside one of the truth boxes."""
    area = max(1e-9, float((box[2] - box[0]) * (box[3] - box[1])))
    for x1, y1, x2, y2 in truth_boxes:
        inter = max(0.0, min(box[2], x2) - max(box[0], x1)) * max(0.0, min(box[3], y2) - max(box[1], y1))
        if inter / area >= COVER:
            return True
    return False


def hottest_pixel_hit(boxes: np.ndarray, values: np.ndarray, size: tuple[int, int], truth_boxes: tuple):
    """(the overlay's hottest pixel toward the decision lies in a truth box, share of pixels that do).

    The heat is what the PNG draws (``region_heat``: each region's attribution spread over its box,
    summed where boxes overlap), in the meme's own pixels. Every pixel of a grid cell has the same heat, so
    the hottest pixel is drawn at random among the hottest ones: the hit is the share of them inside."""
    from memeguard.models.explanation import region_heat

    heat = region_heat(boxes, values, size)
    inside = np.zeros(heat.shape, dtype=bool)
    for x1, y1, x2, y2 in truth_boxes:
        inside[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
    hottest = heat >= heat.max() - 1e-9 * max(1.0, abs(float(heat.max())))
    return float(inside[hottest].mean()), float(inside.mean())


def deletion_drops(model, batch, inputs, base, key, groups, order, ks, draws, rng, sign, logit):
    """(top-k drop, mean random-k drop) per k: rows of ``inputs[key]`` in each group set to the baseline."""
    from memeguard.models.attribution import logit_from

    def drop(chosen) -> float:
        rows = [row for group in chosen for row in groups[group]]
        changed = dict(inputs)
        changed[key] = inputs[key].clone()
        changed[key][0, rows] = base[key][0, rows]
        return sign * (logit - float(logit_from(model, batch, changed)[0]))

    out = {}
    for k in ks:
        if len(groups) <= k:  # deleting everything says nothing about ranking
            continue
        top = drop(order[:k])
        randoms = [drop(rng.choice(len(groups), size=k, replace=False)) for _ in range(draws)]
        out[k] = (top, float(np.mean(randoms)))
    return out


def attribute(model, batch, keep, steps, method, references):
    """IG from the model's joint baseline (``joint``: straight path; ``modalities``: one modality at a
    time, both orders averaged), from each of the reference memes (``references``:
    expected gradients, ``steps`` shared out over the paths), or (``per-modality``) each modality from its
    own removal with the other kept: words given the image, regions given the text (``steps // 2`` each)."""
    from memeguard.models.attribution import integrated_gradients, reference_baselines

    if method in ("joint", "modalities"):
        path = "straight" if method == "joint" else "modalities"
        return integrated_gradients(model, batch, keep, steps, path=path)[0]
    if method == "references":
        baselines = reference_baselines(model, batch, keep, *references)
        return integrated_gradients(model, batch, keep, steps, baselines=baselines)[0]
    inputs = model.attribution_inputs(batch)
    base = model.attribution_baselines(batch, inputs, keep)
    words = integrated_gradients(model, batch, keep, steps // 2, baselines={**inputs, "text": base["text"]})[
        0
    ]
    regions = integrated_gradients(
        model, batch, keep, steps // 2, baselines={**inputs, "regions": base["regions"]}
    )[0]
    words.regions = regions.regions
    return words


def explain_meme(scorer, image, text, truth, label, args, rng, tally, references):
    from memeguard.data.synth import VISUAL_GROUP_NAMES
    from memeguard.models.attribution import keep_mask
    from memeguard.models.explanation import token_words

    steps, ks, draws = args.steps, args.k, args.draws
    ((member, records, batch),) = scorer.member_batches([image], [text])
    model, processor = member.model, member.processor
    keep = keep_mask(batch, processor.tokenizer.all_special_ids)
    result = attribute(model, batch, keep, steps, args.method, references)
    change = result.logit - result.baseline_logit
    if abs(change) > 1e-3:
        tally.deltas.append(abs(result.delta) / abs(change))
    inputs = model.attribution_inputs(batch)
    base = model.attribution_baselines(batch, inputs, keep)
    logit, sign = result.logit, (1.0 if result.logit >= 0 else -1.0)
    cleaned = " ".join(text.split())
    ids = batch["input_ids"][0].tolist()
    owners = token_words(processor.tokenizer, cleaned, ids, processor.config.max_text_length)
    words = cleaned.split()
    word_rows = [[i for i, o in enumerate(owners) if o == w] for w in range(len(words))]
    word_attr = np.asarray([sum(result.text[i] for i in rows) for rows in word_rows])
    region_rows = [[i] for i in range(len(result.regions))]
    for key, groups, attr in (("text", word_rows, word_attr), ("regions", region_rows, result.regions)):
        order = np.argsort(-sign * attr)
        for k, (top, rand) in deletion_drops(
            model, batch, inputs, base, key, groups, order, ks, draws, rng, sign, logit
        ).items():
            tally.top.setdefault((key, k), []).append(top)
            tally.random.setdefault((key, k), []).append(rand)
    if (label == 1) != (logit >= 0) or truth.noun is None or not words:
        return  # localisation is measured on correctly scored memes
    boxes = processor.region_boxes(records[0])
    hits = [covered(box, truth.boxes) for box in boxes]
    top_word = words[int(np.argmax(sign * word_attr))].strip(".,!?:;'\"").lower()
    row = (float(hits[int(np.argmax(sign * result.regions))]), float(np.mean(hits)))
    row += hottest_pixel_hit(boxes, sign * result.regions, image.size, truth.boxes)
    row += (float(top_word == truth.noun), 1.0 / len(words))
    groups = ["hateful" if label == 1 else "benign"]
    groups.append(f"{groups[0]}, {VISUAL_GROUP_NAMES[truth.visual]} object")  # the rates differ by family
    if args.method != "per-modality" and abs(logit - result.baseline_logit) > EXPLAINED:
        groups.append(f"{groups[0]}, |logit - baseline| > {EXPLAINED:g}")
    for group in groups:
        tally.located.setdefault(group, []).append(row)


def rate(share: float, n: int) -> str:
    """A rate and the half-width of its 95 % normal interval, e.g. ``0.58+-0.17``."""
    return f"{share:.2f}+-{1.96 * np.sqrt(share * (1 - share) / max(n, 1)):.2f}"


def report(tally: Tally, ks: list[int], steps: int, splits: list[str], n_memes: int, seconds: float) -> None:
    shown = " + ".join(splits)
    print(f"\nexplained {n_memes} memes of {shown} with IG ({steps} steps) in {seconds:.1f} s CPU")
    if tally.deltas:
        print(f"|delta| / |logit - baseline logit|: median {np.median(tally.deltas):.4f}")
    print(f"\n{'deletion':<10}{'k':>3}{'top-k drop':>12}{'random-k drop':>15}{'ratio':>8}  (logit, toward 0)")
    for key, name in (("text", "words"), ("regions", "regions")):
        for k in ks:
            if (key, k) not in tally.top:
                continue
            top, rand = np.mean(tally.top[key, k]), np.mean(tally.random[key, k])
            ratio = f"{top / rand:8.2f}" if rand > 1e-3 else "     n/a"  # random deletions move nothing
            print(f"{name:<10}{k:>3}{top:>12.3f}{rand:>15.3f}{ratio}")
    print("\nlocalisation, correctly scored memes (top = largest attribution toward the decision)")
    print("(rates +- the half-width of their 95 % normal interval)")
    header = f"{'memes':<36}{'n':>4}{'region on object':>18}{'chance':>8}{'hottest pixel':>15}{'chance':>8}"
    print(header + f"{'word = noun':>13}{'chance':>8}")
    for group, rows in sorted(tally.located.items()):
        region, region_chance, pixel, pixel_chance, noun, noun_chance = np.mean(np.asarray(rows), axis=0)
        print(
            f"{group:<36}{len(rows):>4}{rate(region, len(rows)):>18}{region_chance:>8.3f}"
            f"{rate(pixel, len(rows)):>15}{pixel_chance:>8.3f}{rate(noun, len(rows)):>13}{noun_chance:>8.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/memeguard-explain"))
    parser.add_argument("--n", type=int, default=2000, help="synthetic memes (train is 70%%)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-seed", type=int, default=None, help="the model's seed (default: --seed)")
    parser.add_argument(
        "--label-noise", type=float, default=0.0, help="synthetic label noise (usual set: 0.03)"
    )
    parser.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 10], help="words/regions to delete")
    parser.add_argument("--draws", type=int, default=5, help="random deletions per meme and k")
    parser.add_argument("--limit", type=int, default=None, help="explain at most this many memes")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["dev_seen"],
        help="splits whose memes are explained (none is trained on but train), e.g. dev_seen test_seen "
        "test_unseen for ~7x the memes of dev_seen",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--method",
        choices=("joint", "modalities", "references", "per-modality"),
        default="joint",
        help="joint: straight path from [PAD] words and zero regions (the product's default); modalities: "
        "from the same baseline one modality at a time, both orders averaged; references: expected "
        "gradients from --references train memes; per-modality: words from [PAD] with the image kept, "
        "regions from zeros with the text kept (not complete: compare only)",
    )
    parser.add_argument("--references", type=int, default=4, help="train memes for --method references")
    parser.add_argument(
        "--untinted",
        action="store_true",
        help="the set whose scene light is neutral: only the salient object carries the colour family",
    )
    args = parser.parse_args()

    import torch

    from memeguard.data.hm import load_jsonl
    from memeguard.data.synth import salient_truth
    from memeguard.names import SYNTH_META_FILE, split_file
    from memeguard.serving.scorer import MemeScorer, load_image

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    # One folder per set, so each keeps its data, features and trained model.
    work = args.work / f"noise{args.label_noise:g}-{'plain' if args.untinted else 'tinted'}"
    data, store = prepare(work, args.n, args.seed, args.label_noise, tinted_light=not args.untinted)
    run = train(work, data, store, args.seed if args.train_seed is None else args.train_seed)
    print(f"data, features and {MODEL}: {time.perf_counter() - started:.1f} s ({run})")
    scorer = MemeScorer.from_runs([run], device="cpu")
    meta = json.loads((data / SYNTH_META_FILE).read_text())
    # By id: dev_unseen shares most of its memes with dev_seen.
    memes = list({m.id: m for split in args.splits for m in load_jsonl(data / split_file(split))}.values())
    memes = memes[: args.limit]
    rng, tally = np.random.default_rng(args.seed), Tally()
    references = None
    if args.method == "references":
        references = reference_inputs(scorer, data, args.references, args.seed)
    started = time.process_time()
    for meme in memes:
        truth = salient_truth(meta["memes"][str(meme.id)], meme.text)
        image = load_image(data / meme.img, str(meme.img))
        explain_meme(scorer, image, meme.text, truth, meme.label, args, rng, tally, references)
    light = "neutral light (only the object has the colour family)" if args.untinted else "tinted light"
    print(f"set: label noise {args.label_noise:g}, {light}; method: {args.method}")
    report(tally, args.k, args.steps, args.splits, len(memes), time.process_time() - started)


if __name__ == "__main__":
    main()
