"""The synthetic meme set: a small Hateful-Memes-shaped dataset that can only be solved multimodally.

The real Hateful Memes data cannot be shipped, yet every stage (features, models, training, ensembling)
needs a dataset with the same layout and the same *difficulty structure* to be tested end to end on CPU.
This module writes one: ``out_dir/img/NNNNN.png`` plus ``train``, ``dev_seen``, ``dev_unseen``,
``test_seen`` and ``test_unseen`` jsonl files (test splits carry labels, like the post-challenge release).

The hidden rule
---------------
* **Visual attribute** ``v``: the colour family of one salient object (circle / square / triangle / star)
  drawn large (about 30-50 % of the panel's shorter side, so it covers several cells of a 6x6 grid and
  its colour dominates them). ``v = 0`` is *warm* (red, orange, magenta-pink hues), ``v = 1`` is *cool*
  (green, cyan, blue). The scene's light carries the class too: the background gradient is tinted with
  two hues of the same family. (With the class in the object alone, a tiny transformer trained from
  scratch sits on the XOR plateau for thousands of updates: the class then lives in ~3 of 41 grid
  regions and the noun in 1 of ~13 tokens, so the interaction signal at initialisation is tiny.)
  ``tinted_light=False`` lights every scene with the distractors' neutral hues instead, so the object
  alone carries the colour family: the set where "the object decides" is literally true, for measuring
  whether explanations point at it (``benchmarks/explain.py``); the default set stays as it was.
  Everything else in the picture is label-free: a gradient background with a texture (stripes, checks or
  blotches) and mild noise, small distractor shapes in
  *neutral* hues (yellow, violet, grey) that belong to neither family, and, for about a quarter of the
  memes, a 2-panel collage where each panel holds its own background and an object of the same family.
* **Text attribute** ``t``: which group the one target noun in the caption belongs to, ``t = 0`` for
  animals, ``t = 1`` for vehicles (ten single-wordpiece nouns each in BERT's uncased vocabulary; no real
  groups of people). Captions come from meme-like templates padded with label-free filler words and
  clauses so their length varies like HM's (mean about 11 words, 5 to 25; HM train: 11.7).
* **Label** = ``v XOR t`` ("hateful" = 1), except for about 3 % of memes whose attributes were drawn to
  disagree with the label (label noise). ``v`` is balanced within each label class, so the visual
  attribute alone, and therefore the text attribute alone, says nothing about the label: unimodal models
  sit at AUROC ~0.5 while a model that reads both can reach ~0.97. ``label_noise=0`` gives the same memes
  and pictures with every noun following the rule (for learning proofs, whose ceiling is then 1.0).

Structure copied from the real set
----------------------------------
* **Benign confounders** (Kiela et al. 2020): groups of 2 or 3 memes. An *image twin* reuses the exact
  background and object of its base meme with the target noun swapped to the other group (label flips);
  a *text twin* reuses the base text on a fresh picture of the other colour family (label flips).
  As in HM, where confounders are benign, the base of a pair is the hateful one (a triplet's base is
  hateful or benign, its twins the opposite). A group is never split across splits. Label noise is only put
  on memes outside such groups, so twins always flip.
* **Planted duplicates**: ~1 % of train is an exact copy (same PNG bytes, text and label) of another train
  meme under a new id: exactly what vilio's ``clean_data`` (phash + crude hash + text) removes.
* **Splits** scaled from the real sizes to ``n`` unique ids: train 8,500 / dev_seen 500 / dev_unseen 540,
  of which 400 shared with dev_seen / test_seen 1,000 / test_unseen 2,000 (12,140 unique). The hateful
  rates are the real ones: 35.5 % train, 49.4 % dev_seen, 37.0 % dev_unseen, 49.0 % test_seen,
  37.5 % test_unseen.

Next to the splits, ``synth_meta.json`` records each meme's hidden attributes, group, role and caption
boxes so tests and debugging can check the rule; no reader of the HM layout looks at it.
Images are 160-400 px a side, PNG at compress level 1 (~60 kB each: the background grain costs bytes).
Output is deterministic by ``seed`` on a given Pillow/FreeType build: the same seed gives the same bytes.
Images are written first (each one atomically), ``synth_meta.json`` next and the jsonl files last, so a
killed run never looks like a complete dataset.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from memeguard.data.cleaning import ADD_DUPS, DIM_ERROR_IDS, ISIS_DUPS
from memeguard.data.meme import Meme
from memeguard.errors import ConfigError, DataError
from memeguard.io import atomic_write, write_json_atomic
from memeguard.names import (
    DEV_SEEN,
    DEV_UNSEEN,
    IMAGE_DIR,
    OFFICIAL_SPLITS,
    SYNTH_META_FILE,
    TEST_SEEN,
    TEST_UNSEEN,
    TRAIN,
    split_file,
)

SPLITS = OFFICIAL_SPLITS

# Real phase-2 sizes, broken into disjoint parts: "dev_seen_only" + "shared" = dev_seen (500),
# "shared" + "dev_unseen_new" = dev_unseen (540). Sum = 12,140 unique ids.
REAL_PARTS = {
    TRAIN: 8500,
    "dev_seen_only": 100,
    "shared": 400,
    "dev_unseen_new": 140,
    TEST_SEEN: 1000,
    TEST_UNSEEN: 2000,
}
HATEFUL_RATE = {
    TRAIN: 3019 / 8500,
    DEV_SEEN: 247 / 500,
    DEV_UNSEEN: 200 / 540,
    TEST_SEEN: 490 / 1000,
    TEST_UNSEEN: 750 / 2000,
}
# Ids vilio's clean_data removes or skips by list (ISIS_dups, ADD_dups, dim_error in vilio's
# ``utils/pandas_scripts.py``): a synthetic meme must never carry one, or cleaning would drop it for reasons
# the data does not show.
VILIO_LISTED_IDS = frozenset(ISIS_DUPS) | frozenset(ADD_DUPS) | frozenset(DIM_ERROR_IDS)
MIN_N = 50
MAX_N = 90_000  # ids are 5-digit numbers; leave room so they still look random
LABEL_NOISE = 0.03
DUPLICATE_RATE = 0.01
# Fractions of *groups* (not memes) by kind; a triplet is base + image twin + text twin.
GROUP_KINDS = {"single": 0.55, "image_pair": 0.15, "text_pair": 0.15, "triplet": 0.15}
COLLAGE_RATE = 0.25
SIDE_RANGE = (160, 400)
PNG_COMPRESS_LEVEL = 1

# --- words -------------------------------------------------------------------------------------------
# Two groups of common nouns, each a single wordpiece in bert-base-uncased (a test checks this).
TARGET_NOUNS: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("dog", "cat", "horse", "cow", "pig", "sheep", "duck", "goat", "bear", "monkey"),
    ("car", "truck", "bus", "train", "bike", "boat", "plane", "ship", "van", "taxi"),
)
TEXT_GROUP_NAMES = ("animal", "vehicle")
VISUAL_GROUP_NAMES = ("warm", "cool")

TEMPLATES = (
    "when the {noun} {act} {time}",
    "look at this {noun} {place}",
    "me and the {noun} {time}",
    "nobody: absolutely nobody: the {noun} {act}",
    "that moment when your {noun} {act}",
    "if this {noun} gets a hundred likes i will eat {food}",
    "they said the {noun} was {adj} but here we are",
    "my {noun} after eating {food} {time}",
    "be the {noun} you want to see {place}",
    "{time} the {noun} finally {act}",
    "i can not believe the {noun} is {adj} again",
    "this {noun} knows exactly what it did {time}",
    "nobody asked but the {noun} {act}",
    "when you see a {adj} {noun} {place}",
)
FILLERS = {
    "act": (
        "goes to work",
        "sees the bill",
        "finds the wifi password",
        "starts singing",
        "wakes up early",
        "forgets everything",
        "wins the lottery",
        "hears the ice cream song",
        "does not reply",
        "gets a haircut",
    ),
    "time": (
        "on monday morning",
        "every weekend",
        "at three in the morning",
        "after lunch",
        "in summer",
        "right now",
        "on a friday night",
        "before the exam",
    ),
    "place": (
        "at the beach",
        "in the city",
        "downtown",
        "in the kitchen",
        "at school",
        "at the office",
        "in the park",
        "at the mall",
    ),
    "food": ("pizza", "pancakes", "cold soup", "cheese", "a whole cake", "tacos", "noodles"),
    "adj": ("tired", "famous", "hungry", "late", "confused", "happy", "dramatic", "sleepy"),
}
PREFIXES = ("lol", "honestly", "me:", "true story:", "breaking news:", "plot twist:", "so")
SUFFIXES = (
    "and nobody cares",
    "every single time",
    "send help",
    "just saying",
    "#relatable",
    "and i am not even sorry",
    "change my mind",
    "you know who you are",
)

# --- colours (hue in degrees, saturation and value in [0, 1]) --------------------------------------------
# Salient-object hue ranges per visual class; distractors use hues from neither class.
OBJECT_HUES = (
    ((345.0, 370.0), (18.0, 35.0), (312.0, 335.0)),  # warm: red, orange, magenta-pink
    ((105.0, 140.0), (172.0, 192.0), (208.0, 232.0)),  # cool: green, cyan, blue
)
DISTRACTOR_HUES = ((50.0, 64.0), (262.0, 285.0))  # yellow, violet
SHAPES = ("circle", "square", "triangle", "star")
# Background and distractors never reach pure white or black, so caption pixels are recognisable.
BACKGROUND_VALUE = (0.32, 0.85)


@dataclass
class SynthSummary:
    """What ``generate_synthetic`` wrote: sizes and hateful counts per split, the planted structure."""

    out_dir: Path
    n: int
    seed: int
    split_sizes: dict[str, int]
    hateful: dict[str, int]
    n_shared_dev: int
    duplicate_pairs: list[tuple[int, int]]
    n_image_twins: int
    n_text_twins: int
    n_noisy: int
    n_collages: int
    font: str
    seconds: float

    def __str__(self) -> str:
        sizes = ", ".join(f"{s} {self.split_sizes[s]} ({self.hateful[s]} hateful)" for s in SPLITS)
        return (
            f"{self.n} synthetic memes (seed {self.seed}): {sizes}; {self.n_shared_dev} dev ids shared, "
            f"{len(self.duplicate_pairs)} planted duplicates, {self.n_image_twins} image twins, "
            f"{self.n_text_twins} text twins, {self.n_noisy} noisy labels, in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, object]:
        record = asdict(self)
        record["out_dir"] = str(self.out_dir)
        record["duplicate_pairs"] = [list(pair) for pair in self.duplicate_pairs]
        return record


# --- plan ----------------------------------------------------------------------------------------------


@dataclass
class _ImagePlan:
    """One distinct picture (without caption); image twins and duplicates share one."""

    key: int
    visual: int
    seed: int
    tinted_light: bool = True  # False: the background's hues are neutral, the object alone has the class


@dataclass
class _MemePlan:
    split: str
    group: int
    role: str  # base | image_twin | text_twin | duplicate
    label: int
    visual: int
    text_attr: int
    noisy: bool
    image: int
    text: str = ""
    caption_seed: int = 0
    meme_id: int = -1
    duplicate_of: _MemePlan | None = field(default=None, repr=False)


def split_part_sizes(n: int) -> dict[str, int]:
    """Scale the real disjoint parts to ``n`` ids (largest remainder), every part at least one id."""
    total = sum(REAL_PARTS.values())
    exact = {part: n * size / total for part, size in REAL_PARTS.items()}
    sizes = {part: max(1, math.floor(value)) for part, value in exact.items()}
    by_remainder = sorted(exact, key=lambda part: exact[part] - math.floor(exact[part]), reverse=True)
    for part in by_remainder[: max(0, n - sum(sizes.values()))]:
        sizes[part] += 1
    sizes[TRAIN] += n - sum(sizes.values())  # absorbs the "at least one" bumps
    return sizes


def _draw_group_kinds(rng: np.random.Generator, n_memes: int) -> list[str]:
    """Group kinds filling exactly ``n_memes`` memes; whatever does not fit becomes singles."""
    names = list(GROUP_KINDS)
    probs = np.array(list(GROUP_KINDS.values()))
    size_of = {"single": 1, "image_pair": 2, "text_pair": 2, "triplet": 3}
    kinds: list[str] = []
    left = n_memes
    while left > 0:
        kind = names[rng.choice(len(names), p=probs)]
        if size_of[kind] > left:
            kind = "single"
        kinds.append(kind)
        left -= size_of[kind]
    return kinds


def _plan_split(
    rng: np.random.Generator,
    split: str,
    size: int,
    rate: float,
    counter: dict[str, int],
    label_noise: float = LABEL_NOISE,
) -> list[_MemePlan]:
    """Groups, labels, noise and attributes for one split (duplicates are added later)."""
    kinds = _draw_group_kinds(rng, size)
    # Hateful counts: a pair always holds one hateful meme; a single holds 0 or 1, a triplet 1 or 2
    # (base hateful -> both twins benign). Pick which singles/triplets take the extra hateful slot.
    fixed = sum(kind != "single" for kind in kinds)
    slots = [i for i, kind in enumerate(kinds) if kind in ("single", "triplet")]
    extra = int(np.clip(round(rate * size) - fixed, 0, len(slots)))
    chosen = set(rng.choice(slots, size=extra, replace=False).tolist()) if extra else set()
    members: list[list[tuple[str, int, int]]] = []  # per group: (role, label, visual offset from base)
    for i, kind in enumerate(kinds):
        if kind == "single":
            members.append([("base", int(i in chosen), 0)])
            continue
        base_label = 1 if kind.endswith("pair") else int(i not in chosen)
        group = [("base", base_label, 0)]
        if kind in ("image_pair", "triplet"):
            group.append(("image_twin", 1 - base_label, 0))
        if kind in ("text_pair", "triplet"):
            group.append(("text_twin", 1 - base_label, 1))
        members.append(group)

    # Label noise, stratified by label, only on singles (twins must keep flipping).
    noisy: set[int] = set()
    singles = [i for i, kind in enumerate(kinds) if kind == "single"]
    for label in (0, 1):
        pool = [i for i in singles if members[i][0][1] == label]
        want = min(len(pool), round(LABEL_NOISE * sum(m[1] == label for g in members for m in g)))
        drawn = rng.choice(pool, size=want, replace=False).tolist() if want else []
        # A lower rate keeps a prefix of the same draw: the random stream, and so every other meme, stays put.
        noisy.update(drawn[: round(want * label_noise / LABEL_NOISE)])

    # Visual attribute per group, greedily balanced so that v is independent of the label in every split.
    counts = np.zeros((2, 2), dtype=np.int64)  # [label, visual]
    base_visual = [0] * len(kinds)
    for i in rng.permutation(len(kinds)).tolist():
        cost = []
        for vb in (0, 1):
            trial = counts.copy()
            for _, label, dv in members[i]:
                trial[label, vb ^ dv] += 1
            cost.append(abs(trial[0, 0] - trial[0, 1]) + abs(trial[1, 0] - trial[1, 1]))
        vb = int(rng.integers(2)) if cost[0] == cost[1] else int(np.argmin(cost))
        base_visual[i] = vb
        for _, label, dv in members[i]:
            counts[label, vb ^ dv] += 1

    plans: list[_MemePlan] = []
    for i, group in enumerate(members):
        group_id = counter["group"]
        counter["group"] += 1
        image_keys = {0: counter["image"], 1: counter["image"] + 1}
        counter["image"] += 2
        for role, label, dv in group:
            visual = base_visual[i] ^ dv
            flip = int(i in noisy)
            plans.append(
                _MemePlan(
                    split=split,
                    group=group_id,
                    role=role,
                    label=label,
                    visual=visual,
                    text_attr=visual ^ label ^ flip,
                    noisy=bool(flip),
                    image=image_keys[dv],
                )
            )
    return plans


def _compose_text(rng: np.random.Generator, noun: str) -> tuple[str, dict[str, str]]:
    """A meme caption around ``noun``; returns the text and the choices, so a twin can swap the noun."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    choices = {key: values[int(rng.integers(len(values)))] for key, values in FILLERS.items()}
    body = template.format(noun="{noun}", **choices)
    if rng.random() < 0.35:
        body = f"{PREFIXES[int(rng.integers(len(PREFIXES)))]} {body}"
    n_suffixes = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
    for index in rng.choice(len(SUFFIXES), size=n_suffixes, replace=False).tolist():
        body = f"{body} {SUFFIXES[index]}"
    return body.format(noun=noun), {"pattern": body}


def _pick_noun(rng: np.random.Generator, text_attr: int) -> str:
    group = TARGET_NOUNS[text_attr]
    return group[int(rng.integers(len(group)))]


def _fill_texts(rng: np.random.Generator, plans: list[_MemePlan]) -> None:
    """Base memes get a fresh caption; image twins swap the noun; text twins copy the base text."""
    by_group: dict[int, list[_MemePlan]] = {}
    for plan in plans:
        by_group.setdefault(plan.group, []).append(plan)
    for group in by_group.values():
        base = next(p for p in group if p.role == "base")
        base.text, info = _compose_text(rng, _pick_noun(rng, base.text_attr))
        for twin in group:
            if twin.role == "image_twin":
                twin.text = info["pattern"].format(noun=_pick_noun(rng, twin.text_attr))
            elif twin.role == "text_twin":
                twin.text = base.text


def plan_dataset(
    n: int, seed: int, label_noise: float = LABEL_NOISE
) -> tuple[dict[str, list[_MemePlan]], list[_ImagePlan]]:
    """Everything random except pixels: splits, groups, labels, texts, ids, per-image seeds."""
    if not isinstance(n, int) or isinstance(n, bool) or not MIN_N <= n <= MAX_N:
        raise ConfigError(f"synthetic dataset size n={n!r}: must be an integer between {MIN_N} and {MAX_N}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synthetic dataset seed={seed!r}: must be a non-negative integer")
    if not 0.0 <= label_noise <= LABEL_NOISE:
        raise ConfigError(f"synthetic label noise {label_noise!r}: must be between 0 and {LABEL_NOISE}")
    rng = np.random.default_rng(seed)
    parts = split_part_sizes(n)
    counter = {"group": 0, "image": 0}

    n_dup = max(1, round(DUPLICATE_RATE * parts[TRAIN]))
    train = _plan_split(rng, TRAIN, parts[TRAIN] - n_dup, HATEFUL_RATE[TRAIN], counter, label_noise)
    dev_seen_size = parts["dev_seen_only"] + parts["shared"]
    dev_seen = _plan_split(rng, DEV_SEEN, dev_seen_size, HATEFUL_RATE[DEV_SEEN], counter, label_noise)

    # dev_unseen = some dev_seen memes (same ids) + new ones; pick the shared ones by label so the
    # whole split lands on its own hateful rate.
    n_shared, n_new = parts["shared"], parts["dev_unseen_new"]
    seen_hateful = [p for p in dev_seen if p.label == 1]
    seen_benign = [p for p in dev_seen if p.label == 0]
    shared_hateful = int(
        np.clip(round(HATEFUL_RATE[DEV_UNSEEN] * n_shared), n_shared - len(seen_benign), len(seen_hateful))
    )
    target_unseen = round(HATEFUL_RATE[DEV_UNSEEN] * (n_shared + n_new))
    new_rate = float(np.clip((target_unseen - shared_hateful) / n_new, 0.0, 1.0))
    dev_unseen_new = _plan_split(rng, DEV_UNSEEN, n_new, new_rate, counter, label_noise)
    shared = [seen_hateful[i] for i in rng.choice(len(seen_hateful), shared_hateful, replace=False)]
    shared += [seen_benign[i] for i in rng.choice(len(seen_benign), n_shared - shared_hateful, replace=False)]

    test_seen = _plan_split(rng, TEST_SEEN, parts[TEST_SEEN], HATEFUL_RATE[TEST_SEEN], counter, label_noise)
    test_unseen = _plan_split(
        rng, TEST_UNSEEN, parts[TEST_UNSEEN], HATEFUL_RATE[TEST_UNSEEN], counter, label_noise
    )

    everything = train + dev_seen + dev_unseen_new + test_seen + test_unseen
    _fill_texts(rng, everything)

    # Planted duplicates: copies of train singles (a copy of a twin would make a phash group of 3, which
    # vilio's cleaning deliberately leaves alone).
    single_groups = {p.group for p in train} - {p.group for p in train if p.role != "base"}
    sources = [p for p in train if p.group in single_groups]
    duplicates = []
    for index in rng.choice(len(sources), size=min(n_dup, len(sources)), replace=False).tolist():
        src = sources[index]
        duplicates.append(
            _MemePlan(
                split=TRAIN,
                group=src.group,
                role="duplicate",
                label=src.label,
                visual=src.visual,
                text_attr=src.text_attr,
                noisy=src.noisy,
                image=src.image,
                text=src.text,
                duplicate_of=src,
            )
        )
    train += duplicates
    everything += duplicates

    pool = np.setdiff1d(np.arange(100, 100_000), np.fromiter(VILIO_LISTED_IDS, dtype=np.int64))
    ids = rng.choice(pool, size=len(everything), replace=False)
    caption_seeds = rng.integers(0, 2**63 - 1, size=len(everything))
    for plan, meme_id, caption_seed in zip(everything, ids.tolist(), caption_seeds.tolist(), strict=True):
        plan.meme_id = int(meme_id)
        plan.caption_seed = int(caption_seed)

    used = sorted({p.image for p in everything})
    visual_of = {p.image: p.visual for p in everything}
    image_seeds = rng.integers(0, 2**63 - 1, size=len(used))
    images = [
        _ImagePlan(key=k, visual=visual_of[k], seed=int(s))
        for k, s in zip(used, image_seeds.tolist(), strict=True)
    ]

    splits = {
        TRAIN: train,
        DEV_SEEN: dev_seen,
        DEV_UNSEEN: shared + dev_unseen_new,
        TEST_SEEN: test_seen,
        TEST_UNSEEN: test_unseen,
    }
    # Shuffle line order so twins and duplicates are not adjacent.
    return {name: [memes[i] for i in rng.permutation(len(memes))] for name, memes in splits.items()}, images


# --- pixels ----------------------------------------------------------------------------------------------


def find_font() -> Path:
    """DejaVu Sans Bold: matplotlib's bundled copy (same file everywhere, so same bytes), else
    fontconfig's."""
    try:
        import matplotlib

        bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        if bundled.is_file():
            return bundled
    except ImportError:  # pragma: no cover - matplotlib is a declared dependency
        pass
    try:
        found = subprocess.run(
            ["fc-match", "-f", "%{file}", "DejaVu Sans:bold"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    if found and Path(found).is_file() and found.lower().endswith((".ttf", ".otf")):
        return Path(found)
    raise ConfigError(
        "no TrueType font for meme captions: matplotlib's DejaVuSans-Bold.ttf is missing and fc-match "
        "found none (install matplotlib or fonts-dejavu)"
    )


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _hsv_to_rgb(hue: float, sat: float, val: float) -> np.ndarray:
    """One HSV colour (hue in degrees) -> RGB floats in [0, 1]."""
    h = (hue % 360.0) / 60.0
    c = val * sat
    x = c * (1 - abs(h % 2 - 1))
    table = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)]
    r, g, b = table[int(h) % 6]
    return np.array([r, g, b]) + (val - c)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _background(
    rng: np.random.Generator, width: int, height: int, visual: int, tinted_light: bool = True
) -> np.ndarray:
    """Low-saturation two-colour gradient times a texture plus mild grain, float RGB in [0, 1].

    The grain is monochrome and comes in 4x4-pixel blocks: per-pixel colour noise would make every PNG
    ~150 kB and slow to encode, while coarse grain keeps files ~25 kB and still defeats exact matching."""
    # The scene's light is tinted by the visual class too (warm or cool): the class then shows in every
    # region of a coarse grid, not only in the few cells the object covers.
    # Untinted (opt-in), the light takes the distractors' neutral hues, drawn the same way (one integer,
    # one uniform each), so the rest of the picture comes from the same random stream.
    hue = functools.partial(_class_hue, visual=visual) if tinted_light else _neutral_hue
    c1 = _hsv_to_rgb(hue(rng), rng.uniform(0.35, 0.6), _uniform(rng, (0.45, 0.8)))
    c2 = _hsv_to_rgb(hue(rng), rng.uniform(0.35, 0.6), _uniform(rng, (0.4, 0.8)))
    ys, xs = np.indices((height, width), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = c1.astype(np.float32) + ramp[..., None] * (c2 - c1).astype(np.float32)

    texture = int(rng.integers(3))
    if texture == 0:  # stripes
        period = rng.uniform(8, 30)
        theta = rng.uniform(0, math.pi)
        phase = (xs * np.float32(math.cos(theta)) + ys * np.float32(math.sin(theta))) * np.float32(
            2 * math.pi / period
        )
        wave = np.sin(phase)
    elif texture == 1:  # checks
        cell = rng.uniform(10, 28)
        wave = np.where(((xs // cell) + (ys // cell)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    else:  # blotches: coarse random field, bilinearly upsampled
        coarse = Image.fromarray(rng.uniform(-1, 1, (5, 5)).astype(np.float32), mode="F")
        wave = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR))
    image *= 1 + np.float32(rng.uniform(0.04, 0.12)) * wave[..., None]
    grain = rng.normal(0, rng.uniform(0.008, 0.02), (height // 4 + 1, width // 4 + 1, 1)).astype(np.float32)
    image += grain.repeat(4, axis=0).repeat(4, axis=1)[:height, :width]
    low, high = BACKGROUND_VALUE
    return np.clip(image, low * 0.8, high * 1.05)


def _shape_points(
    shape: str, cx: float, cy: float, radius: float, rotation: float
) -> list[tuple[float, float]]:
    """Polygon vertices of a square / triangle / star centred at (cx, cy)."""
    if shape == "square":
        angles, radii = [rotation + k * math.pi / 2 + math.pi / 4 for k in range(4)], [radius] * 4
    elif shape == "triangle":
        angles, radii = [rotation + k * 2 * math.pi / 3 - math.pi / 2 for k in range(3)], [radius * 1.15] * 3
    else:  # five-pointed star
        angles = [rotation + k * math.pi / 5 - math.pi / 2 for k in range(10)]
        radii = [radius * 1.2 if k % 2 == 0 else radius * 0.55 for k in range(10)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float], rotation: float, rgb: np.ndarray
) -> None:
    cx, cy, radius = box
    fill = tuple(int(round(c * 255)) for c in np.clip(rgb, 0, 1))
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(_shape_points(shape, cx, cy, radius, rotation), fill=fill)


def _class_hue(rng: np.random.Generator, visual: int) -> float:
    """A hue from one of the visual class's hue ranges."""
    low, high = OBJECT_HUES[visual][int(rng.integers(len(OBJECT_HUES[visual])))]
    return float(rng.uniform(low, high))


def _neutral_hue(rng: np.random.Generator) -> float:
    """A hue from the distractors' ranges (yellow, violet): of neither visual class."""
    low, high = DISTRACTOR_HUES[int(rng.integers(len(DISTRACTOR_HUES)))]
    return float(rng.uniform(low, high))


def _object_colour(rng: np.random.Generator, visual: int) -> np.ndarray:
    families = OBJECT_HUES[visual]
    hue = _uniform(rng, families[int(rng.integers(len(families)))])
    return _hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))


def _distractor_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        return np.full(3, rng.uniform(*BACKGROUND_VALUE))
    hue = _uniform(rng, DISTRACTOR_HUES[int(rng.integers(len(DISTRACTOR_HUES)))])
    return _hsv_to_rgb(hue, rng.uniform(0.4, 0.75), rng.uniform(0.5, 0.85))


def _panel(
    rng: np.random.Generator, width: int, height: int, visual: int, tinted_light: bool = True
) -> tuple[Image.Image, dict[str, object]]:
    """One photo-like panel: background, 2-6 small distractors, then one large salient object kept
    inside the middle 64 % of the height so captions rarely cover it."""
    image = Image.fromarray(
        (_background(rng, width, height, visual, tinted_light) * 255).round().astype(np.uint8), mode="RGB"
    )
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(int(rng.integers(2, 7))):
        radius = rng.uniform(0.03, 0.07) * short
        centre = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        _draw_shape(draw, shape, (*centre, radius), rng.uniform(0, 2 * math.pi), _distractor_colour(rng))
    radius = rng.uniform(0.15, 0.25) * short
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    cx = rng.uniform(radius * 1.2, width - radius * 1.2)
    cy = rng.uniform(
        max(radius * 1.2, 0.18 * height + radius * 0.5),
        min(height - radius * 1.2, 0.82 * height - radius * 0.5),
    )
    _draw_shape(draw, shape, (cx, cy, radius), rng.uniform(0, 2 * math.pi), _object_colour(rng, visual))
    return image, {"shape": shape, "centre": [round(cx, 1), round(cy, 1)], "radius": round(radius, 1)}


def render_picture(plan: _ImagePlan) -> tuple[Image.Image, dict[str, object]]:
    """The caption-free picture of one image plan: a single panel or a 2-panel collage."""
    rng = np.random.default_rng(plan.seed)
    width, height = (int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1)) for _ in range(2))
    if rng.random() >= COLLAGE_RATE:
        image, info = _panel(rng, width, height, plan.visual, plan.tinted_light)
        return image, {"collage": False, "objects": [info]}
    canvas = Image.new("RGB", (width, height))
    side_by_side = width >= height
    objects = []
    for k in range(2):
        if side_by_side:
            box = (k * width // 2, 0, width // 2 if k == 0 else width - width // 2, height)
        else:
            box = (0, k * height // 2, width, height // 2 if k == 0 else height - height // 2)
        panel, info = _panel(rng, box[2], box[3], plan.visual, plan.tinted_light)
        canvas.paste(panel, (box[0], box[1]))
        info["centre"] = [info["centre"][0] + box[0], info["centre"][1] + box[1]]  # type: ignore[index]
        objects.append(info)
    # A thin white-ish separator like real collages (kept below pure white).
    draw = ImageDraw.Draw(canvas)
    if side_by_side:
        draw.rectangle((width // 2 - 1, 0, width // 2, height), fill=(225, 225, 225))
    else:
        draw.rectangle((0, height // 2 - 1, width, height // 2), fill=(225, 225, 225))
    return canvas, {"collage": True, "objects": objects}


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_width: float) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def draw_caption(image: Image.Image, text: str, seed: int, font_path: str) -> list[list[int]]:
    """Classic meme caption: white bold text with a black outline at the top, the bottom, or split over
    both. Returns the caption boxes (x0, y0, x1, y1) so callers can tell caption pixels from picture."""
    rng = np.random.default_rng(seed)
    width, height = image.size
    words = text.split()
    mode = ("top", "bottom", "both")[int(rng.choice(3, p=[0.3, 0.3, 0.4]))] if len(words) > 1 else "top"
    if mode == "both":
        cut = max(1, min(len(words) - 1, round(len(words) * rng.uniform(0.35, 0.65))))
        parts = {"top": " ".join(words[:cut]), "bottom": " ".join(words[cut:])}
    else:
        parts = {mode: text}
    size = max(11, int(width / rng.uniform(11, 15)))
    while True:  # shrink until each part fits in at most 3 lines and a third of the height
        font = _font(font_path, size)
        wrapped = {where: _wrap(part, font, width * 0.92) for where, part in parts.items()}
        line_height = int(size * 1.15)
        fits = all(
            len(lines) <= 3 and max(font.getlength(line) for line in lines) <= width * 0.96
            for lines in wrapped.values()
        )
        if (fits and max(len(lines) for lines in wrapped.values()) * line_height <= height / 3) or size <= 9:
            break
        size -= 1
    stroke = max(1, round(size / 12))
    draw = ImageDraw.Draw(image)
    boxes = []
    for where, lines in wrapped.items():
        y = int(height * 0.03) if where == "top" else height - int(height * 0.03) - len(lines) * line_height
        for line in lines:
            x = (width - font.getlength(line)) / 2
            draw.text((x, y), line, font=font, fill="white", stroke_width=stroke, stroke_fill="black")
            left, top, right, bottom = draw.textbbox((x, y), line, font=font, stroke_width=stroke)
            boxes.append(
                [int(math.floor(left)), int(math.floor(top)), int(math.ceil(right)), int(math.ceil(bottom))]
            )
            y += line_height
    return boxes


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    """Temp file then rename: a killed run leaves whole images or none. No fsync per image (thousands of
    them); the jsonl files, written last through ``atomic_write``, are fsynced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- orchestration -------------------------------------------------------------------------------------

MARKER = ".memeguard_synth"


def _prepare_out_dir(out_dir: Path) -> None:
    """Accept an empty/new folder, or one a previous synth run wrote (then start it over)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise DataError(
            f"{out_dir}: folder is not empty and was not written by the synthetic generator; "
            "choose a new folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by memeguard.data.synth\n", encoding="utf-8")
    # Remove the previous run's splits (and derived ones such as train_clean/traindev/pretrain) first, so
    # an interrupted rerun never looks complete; stale images are removed at the end.
    for old in [*out_dir.glob("*.jsonl"), out_dir / SYNTH_META_FILE]:
        old.unlink(missing_ok=True)
    (out_dir / IMAGE_DIR).mkdir(exist_ok=True)


def _progress(total: int, enabled: bool):  # noqa: ANN202 - rich objects, imported lazily
    if not enabled:
        return None
    from rich.progress import Progress

    progress = Progress(transient=True)
    progress.start()
    return progress, progress.add_task("synthetic memes", total=total)


def generate_synthetic(
    out_dir: str | os.PathLike[str],
    n: int = 3000,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    label_noise: float = LABEL_NOISE,
    tinted_light: bool = True,
) -> SynthSummary:
    """Write the synthetic HM-layout dataset of ``n`` unique ids into ``out_dir`` (see module docstring).

    ``workers`` processes render images (default: up to 2, the CPUs available); every picture has its own
    seed from the plan, so the bytes do not depend on the number of workers. ``label_noise`` (0 to the default
    0.03) lowers the share of memes whose noun disagrees with the rule; the same seed then gives the same
    memes and pictures, with the noun of the un-flipped memes taken from the rule-consistent group (a set
    whose dev AUROC ceiling is 1.0, for learning proofs; with 3 % noise, following the rule exactly scores
    about 0.95). ``tinted_light=False``: the same plan with neutral scene light, so only the salient object
    carries the colour family (see the module docstring)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    splits, images = plan_dataset(n, seed, label_noise)
    if not tinted_light:
        images = [replace(plan, tinted_light=False) for plan in images]
    font_path = str(find_font())
    _prepare_out_dir(out_dir)

    by_image: dict[int, list[_MemePlan]] = {}
    originals = [p for memes in splits.values() for p in memes if p.role != "duplicate"]
    unique = {id(p): p for p in originals}.values()  # dev_seen/dev_unseen share plan objects
    for plan in unique:
        by_image.setdefault(plan.image, []).append(plan)
    duplicates = [p for p in splits[TRAIN] if p.role == "duplicate"]

    jobs = [(image_plan, by_image.get(image_plan.key, []), font_path, out_dir) for image_plan in images]
    meta: dict[str, dict[str, object]] = {}
    bar = _progress(len(jobs), progress)
    try:
        for records in _map(_render_image_job, jobs, _worker_count(workers, len(jobs))):
            meta.update(records)
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    for plan in duplicates:
        source = plan.duplicate_of
        assert source is not None
        data = (out_dir / IMAGE_DIR / f"{source.meme_id:05d}.png").read_bytes()
        _write_file(out_dir / IMAGE_DIR / f"{plan.meme_id:05d}.png", data)
        record = dict(meta[str(source.meme_id)])
        record.update(role="duplicate", duplicate_of=source.meme_id)
        meta[str(plan.meme_id)] = record

    all_ids = {p.meme_id for memes in splits.values() for p in memes}
    for stale in (out_dir / IMAGE_DIR).glob("*.png"):
        if not stale.stem.isdigit() or int(stale.stem) not in all_ids:
            stale.unlink()

    write_json_atomic(
        out_dir / SYNTH_META_FILE,
        {
            "generator": "memeguard.data.synth",
            "version": 1,
            "n": n,
            "seed": seed,
            "label_noise": label_noise,
            **({} if tinted_light else {"tinted_light": False}),  # the default set's file stays as it was
            "memes": meta,
        },
        indent=None,
    )
    for name in SPLITS:
        _write_split(out_dir / split_file(name), splits[name])

    return _summary(out_dir, n, seed, splits, images, meta, font_path, time.perf_counter() - start)


def _render_image_job(job: tuple[_ImagePlan, list[_MemePlan], str, Path]) -> dict[str, dict[str, object]]:
    """Render one picture and every captioned meme on it; write the PNGs; return their meta records."""
    image_plan, plans, font_path, out_dir = job
    picture, picture_info = render_picture(image_plan)
    records = {}
    for plan in plans:
        captioned = picture.copy()
        boxes = draw_caption(captioned, plan.text, plan.caption_seed, font_path)
        _write_file(out_dir / IMAGE_DIR / f"{plan.meme_id:05d}.png", _png_bytes(captioned))
        records[str(plan.meme_id)] = _meta_record(plan, picture_info, boxes, captioned.size)
    return records


def _worker_count(workers: int | None, n_jobs: int) -> int:
    if workers is None:
        available = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        )
        workers = min(2, available)
    if workers < 1:
        raise ConfigError(f"synthetic generator workers={workers}: must be at least 1")
    return 1 if n_jobs < 64 else workers


def _map(function, jobs: list, workers: int):  # noqa: ANN001, ANN202 - generic helper
    """``map`` in this process, or over a process pool in order-preserving chunks."""
    if workers == 1:
        yield from map(function, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver/spawn would re-import torch-heavy parents slowly; fork is safe here (no threads needed).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(function, jobs, chunksize=16)


def _meta_record(
    plan: _MemePlan, picture: dict[str, object], boxes: list[list[int]], size: tuple[int, int]
) -> dict[str, object]:
    return {
        "split": plan.split,
        "group": plan.group,
        "role": plan.role,
        "image": plan.image,
        "visual": plan.visual,
        "visual_name": VISUAL_GROUP_NAMES[plan.visual],
        "text_attr": plan.text_attr,
        "text_name": TEXT_GROUP_NAMES[plan.text_attr],
        "noisy": plan.noisy,
        "size": list(size),
        "caption_boxes": boxes,
        "duplicate_of": None,
        **picture,
    }


# How far a shape reaches from its centre, in units of its drawn radius (see ``_shape_points``).
SHAPE_EXTENT = {"circle": 1.0, "square": 1.0, "triangle": 1.15, "star": 1.2}


@dataclass(frozen=True)
class SalientTruth:
    """Where a synthetic meme's label comes from: the salient objects' bounding boxes (x1, y1, x2, y2,
    pixels of the meme; two in a collage) and the caption's target noun. Benchmarks of explanations
    compare attributions against it."""

    boxes: tuple[tuple[float, float, float, float], ...]
    noun: str | None
    visual: int
    text_attr: int


def salient_truth(record: Mapping[str, object], text: str) -> SalientTruth:
    """A meme's ``synth_meta.json`` record and its caption -> its :class:`SalientTruth`."""
    width, height = (float(v) for v in record["size"])  # type: ignore[union-attr]
    boxes = []
    for obj in record["objects"]:  # type: ignore[union-attr]
        (cx, cy), reach = obj["centre"], obj["radius"] * SHAPE_EXTENT[obj["shape"]]
        boxes.append(
            (max(0.0, cx - reach), max(0.0, cy - reach), min(width, cx + reach), min(height, cy + reach))
        )
    text_attr = int(record["text_attr"])  # type: ignore[call-overload]
    words = [word.strip(".,!?:;'\"").lower() for word in text.split()]
    noun = next((word for word in words if word in TARGET_NOUNS[text_attr]), None)
    return SalientTruth(tuple(boxes), noun, int(record["visual"]), text_attr)  # type: ignore[call-overload]


def _write_split(path: Path, plans: Sequence[_MemePlan]) -> None:
    with atomic_write(path) as handle:
        for plan in plans:
            image = f"{IMAGE_DIR}/{plan.meme_id:05d}.png"
            meme = Meme(id=plan.meme_id, img=image, text=plan.text, label=plan.label)
            handle.write(json.dumps(meme.to_json(), ensure_ascii=False) + "\n")


def _summary(
    out_dir: Path,
    n: int,
    seed: int,
    splits: dict[str, list[_MemePlan]],
    images: list[_ImagePlan],
    meta: dict[str, dict[str, object]],
    font_path: str,
    seconds: float,
) -> SynthSummary:
    seen_ids = {p.meme_id for p in splits[DEV_SEEN]}
    unique = {p.meme_id: p for memes in splits.values() for p in memes}.values()
    return SynthSummary(
        out_dir=out_dir,
        n=n,
        seed=seed,
        split_sizes={name: len(memes) for name, memes in splits.items()},
        hateful={name: sum(p.label for p in memes) for name, memes in splits.items()},
        n_shared_dev=sum(p.meme_id in seen_ids for p in splits[DEV_UNSEEN]),
        duplicate_pairs=[
            (p.duplicate_of.meme_id, p.meme_id) for p in splits[TRAIN] if p.duplicate_of is not None
        ],
        n_image_twins=sum(p.role == "image_twin" for p in unique),
        n_text_twins=sum(p.role == "text_twin" for p in unique),
        n_noisy=sum(p.noisy for p in unique if p.role != "duplicate"),
        n_collages=sum(bool(record["collage"]) for record in meta.values() if record["role"] != "duplicate"),
        font=font_path,
        seconds=round(seconds, 2),
    )
