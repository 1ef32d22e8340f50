"""A bundle's model card (``README.md``): what it scores, how well, what it learnt from, where not to use it.

The Hugging Face Hub shows a repository's README as its model card, so a published bundle carries one;
the figures are the ones the exporter computed (dev and, where labelled, test splits) at the stored
operating point, not numbers typed by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from memeguard.serving.bundle import BundleManifest

_RULE_TEXT = {
    "accuracy": "the threshold with the highest dev_seen accuracy",
    "precision": "the highest-recall threshold whose dev_seen precision is at least {target:g}",
    "recall": "the highest-precision threshold whose dev_seen recall is at least {target:g}",
    "fixed": "a fixed threshold of {target:g}",
}

INTENDED_USE = """\
Research on multimodal hate speech, and as one signal for human content moderators: it ranks memes
(image + caption) by the probability that they are hateful under the Hateful Memes definition (a direct or
indirect attack on people based on protected characteristics). Score with
`memeguard score IMAGE --model BUNDLE --text "..."`, `memeguard serve --model BUNDLE`, or
`MemeScorer.from_bundle("BUNDLE")` in Python."""

LIMITATIONS = """\
- Not for automated removal decisions without human review: errors fall unevenly across groups and topics.
- Trained on English captions and the Hateful Memes image distribution; other languages, cultures, screenshot
  styles or text-free images are out of distribution and scores there are unvalidated.
- The operating point was chosen on dev_seen; the hateful share of the memes it is used on changes the
  precision it achieves. Re-choose it (`memeguard export ... --target-precision P`) on data like yours.
- Scores depend on the caption: a wrong OCR reading changes the score. Sarcasm, new slurs and symbols
  that appeared after training are missed.
- The Hateful Memes data (and so these weights) are under Meta's dataset licence: research use only."""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_table(manifest: BundleManifest) -> str:
    if not manifest.metrics:
        return "No labelled split with predictions was available at export time.\n"
    rows = [
        "| split | memes | hateful | AUROC | accuracy | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, values in manifest.metrics.items():
        cells = [values.get(k) for k in ("memes", "hateful", "auroc", "accuracy", "precision", "recall")]
        rows.append(f"| {split} | " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _members_table(manifest: BundleManifest, configs: Sequence[dict[str, Any]], metas: Sequence[dict]) -> str:
    rows = [
        "| member | architecture | weight | trained on | seed | epochs | features |",
        "|---|---|---|---|---|---|---|",
    ]
    for member, config, meta in zip(manifest.members, configs, metas, strict=True):
        features = f"{meta.get('extractor', '?')} ({meta.get('variant', 'default')})"
        cells = [member.name, member.architecture, f"{member.weight:.4f}", config.get("train_split", "?")]
        cells += [str(config.get("seed", "?")), str(config.get("epochs", "?")), features]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


_OPTIMIZE_TEXT = {
    "fp32": "in fp32 PyTorch, as trained",
    "int8": "on the CPU with int8 feed-forward Linear layers and per-token activation scales "
    "(`export --optimize int8`; probabilities within 0.01 of fp32 on memeguard's test models)",
    "onnx": "on the CPU by onnxruntime, from each member's exported `model/model.onnx` "
    "(`export --optimize onnx`)",
}


def model_card(
    manifest: BundleManifest,
    configs: Sequence[dict[str, Any]],
    metas: Sequence[dict],
    synthetic: bool = False,
) -> str:
    """The card's markdown for a bundle about to be written (``configs``/``metas``: each member's run).

    ``synthetic``: the labels came from ``memeguard data synth`` (the demo), which the card must say.
    """
    point = manifest.operating_point
    rule = _RULE_TEXT[point.rule].format(target=point.target if point.target is not None else 0.0)
    ensemble = (
        f"Members are blended as the `{manifest.ensemble.method}` ensemble's weighted mean of probabilities."
        if manifest.ensemble is not None
        else "Members are blended as the equal-weight mean of their probabilities."
    )
    data_dirs = sorted({str(config.get("data_dir", "?")) for config in configs})
    dataset = (
        "Synthetic memes from `memeguard data synth` (a demo: these weights are not a hateful-meme model)"
        if synthetic
        else "Hateful Memes (Kiela et al., 2020)"
    )
    return f"""---
library_name: memeguard
tags: [hateful-memes, multimodal, content-moderation]
---

# memeguard bundle: hateful meme classifier

A {len(manifest.members)}-model bundle exported by memeguard {manifest.memeguard_version}. {ensemble}
A meme is labelled hateful when its probability is at least **{point.threshold:.6f}**: {rule}.
`score` and `serve` run the members {_OPTIMIZE_TEXT[manifest.optimize]}.

## Metrics (at the operating point)

{_metrics_table(manifest)}
## Members

{_members_table(manifest, configs, metas)}
## Training data

{dataset} in memeguard's layout, from: {", ".join(f"`{d}`" for d in data_dirs)}.
Region features are recomputed on new images with the extractor settings recorded in each member's
`features_meta.json`; its weights are checked against the recorded sha256 when the bundle loads.

## Intended use

{INTENDED_USE}

## Limitations

{LIMITATIONS}
"""
