"""Seed averaging, vilio's two-pass loop and ``ensemble_folder`` on folders with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from memeguard.cli import main
from memeguard.data.predictions import read_predictions, write_predictions
from memeguard.ensemble.folder import decision_threshold, ensemble_folder, resolve_families
from memeguard.ensemble.methods import mean_average, power_average, rank_average, weighted_average
from memeguard.ensemble.table import ScoreTable, stack_predictions
from memeguard.ensemble.vilio_loop import vilio_loop
from memeguard.errors import ConfigError, DataError


def _by_id(path, ids) -> np.ndarray:
    pred = read_predictions(path)
    position = {int(i): k for k, i in enumerate(pred.ids)}
    return pred.proba[[position[int(i)] for i in ids]]


def test_seed_average_is_the_plain_mean_matched_by_id(make_folder) -> None:
    folder = make_folder()
    a = folder.noisy("U__36", 2.0)
    b = folder.noisy("U__72", 1.0)
    c = folder.noisy("O", 1.5)
    result = ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out", method="sa")
    assert result.families == {"O": ["O"], "U": ["U__36", "U__72"]}
    for split in folder.sizes:
        family_u = _by_id(folder.root / "out" / "families" / f"U_{split}.csv", folder.ids[split])
        np.testing.assert_allclose(family_u, (a[split] + b[split]) / 2)
        # SA over the two families, min-max normalised on this split
        expected = mean_average(np.stack([c[split], (a[split] + b[split]) / 2], axis=1))
        np.testing.assert_allclose(_by_id(result.files[split], folder.ids[split]), expected)
    assert not (folder.root / "out" / "families" / "O_dev_seen.csv").exists()  # single runs are not copied


def test_the_loop_on_a_case_with_a_known_answer(make_folder) -> None:
    folder = make_folder(seed=1)
    # Family "P" ranks every split perfectly; six others are noisy, of decreasing quality.
    perfect = folder.add_model("P", lambda y, rng: 0.2 + 0.5 * y + rng.uniform(0, 0.1, len(y)))
    noisy = {
        f"M{k}": folder.noisy(f"M{k}", signal) for k, signal in enumerate([2.5, 2.0, 1.5, 1.0, 0.6, 0.3])
    }
    inputs = {p: p.read_bytes() for p in folder.pred_dir.iterdir()}

    result = ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out", method="loop")
    record = json.loads(result.weights_path.read_text())

    # Two passes. Pass 1 blends all 7 families; pass 2 prunes 7 + 4 candidates to the best 5.
    first, second = record["passes"]
    assert first["kept"] == sorted(["P", *noisy]) and first["dropped"] == []
    y = folder.labels["dev_seen"]
    family_dev = {"P": perfect["dev_seen"], **{k: v["dev_seen"] for k, v in noisy.items()}}
    for name, proba in family_dev.items():
        assert first["candidates"][name] == pytest.approx(roc_auc_score(y, proba))
    candidates = {
        **{k: roc_auc_score(y, v) for k, v in family_dev.items()},
        **{f"{m}1": first["blends"][m] for m in ("SA", "PA", "RA", "SX")},
    }
    assert second["candidates"] == pytest.approx(candidates)
    ranked = sorted(candidates, key=lambda name: candidates[name])  # stable: ties keep candidate order
    assert set(second["dropped"]) == set(ranked[:6])
    assert len(second["kept"]) == 5 and "P" in second["kept"]

    # SX finds the perfect ranking, so the dev threshold labels both test splits without error.
    assert result.dev_auroc == 1.0 and record["final"]["blend"] == "SX2"
    for split in ("test_seen", "test_unseen"):
        final = read_predictions(result.files[split])
        labels = dict(zip(folder.ids[split].tolist(), folder.labels[split].tolist(), strict=True))
        assert accuracy_score([labels[int(i)] for i in final.ids], final.label) == 1.0
        assert ((final.proba >= 0) & (final.proba <= 1)).all()
    assert result.dev_accuracy == 1.0
    # Inputs untouched (vilio's SA deleted them).
    assert {p: p.read_bytes() for p in folder.pred_dir.iterdir()} == inputs


def test_loop_final_blend_is_the_weighted_average_of_the_kept_columns() -> None:
    rng = np.random.default_rng(4)
    y = np.arange(120) % 2
    tables = {}
    for split, n in (("dev_seen", 120), ("test_seen", 90)):
        labels = y if split == "dev_seen" else np.arange(n) % 2
        scores = np.stack(
            [1 / (1 + np.exp(-(s * labels + rng.normal(0, 1, n)))) for s in (1.5, 1.0, 0.5, 0.2)], axis=1
        )
        tables[split] = ScoreTable(split, np.arange(n), ("A", "B", "C", "D"), scores)
    loop = vilio_loop(tables, y, optimizer="coordinate")
    assert len(loop.passes) == 2
    second = loop.passes[1]
    # Rebuild pass 2's candidates independently and apply the reported weights.
    for split, table in tables.items():
        sx1 = weighted_average(table.scores, list(loop.passes[0].sx_weights.values()))
        columns = {
            **{n: table.column(n) for n in table.names},
            "SA1": mean_average(table.scores),
            "PA1": power_average(table.scores),
            "RA1": rank_average(table.scores),
            "SX1": sx1,
        }
        kept = np.stack([columns[name] for name in second.kept], axis=1)
        np.testing.assert_allclose(
            loop.scores[split], weighted_average(kept, [loop.weights[n] for n in second.kept])
        )
    assert loop.dev_auroc == pytest.approx(roc_auc_score(y, loop.scores["dev_seen"]))


def test_mismatched_ids_name_the_file(make_folder) -> None:
    folder = make_folder()
    folder.noisy("A", 1.0)
    folder.noisy("B", 1.0)
    bad = folder.pred_dir / "B_test_seen.csv"
    pred = read_predictions(bad)
    write_predictions(bad, np.append(pred.ids[1:], 999999), np.append(pred.proba[1:], 0.5))
    with pytest.raises(DataError, match=r"B_test_seen\.csv.*missing ids: \d+.*extra ids: 999999"):
        ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out")


def test_nan_missing_split_and_unknown_dev_ids_are_clear_errors(make_folder) -> None:
    folder = make_folder()
    folder.noisy("A", 1.0)
    folder.noisy("B_x", 1.0)  # underscores in model names are fine
    csv = folder.pred_dir / "B_x_dev_seen.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",nan,0"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"B_x_dev_seen\.csv:4: .*not a probability"):
        ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out")
    csv.unlink()
    with pytest.raises(DataError, match=r"B_x_dev_seen\.csv: missing"):
        ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out")
    folder.noisy("B_x", 1.0)
    lines = folder.gt_path.read_text().splitlines()
    folder.gt_path.write_text("\n".join(lines[1:]) + "\n")  # ground truth lacks one predicted meme
    with pytest.raises(DataError, match=r"ids not in .*dev_seen\.jsonl"):
        ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out")


def test_stack_rejects_nan_built_in_memory() -> None:
    from memeguard.data.predictions import Predictions

    good = Predictions(np.array([1, 2]), np.array([0.1, 0.2]), np.array([0, 0]))
    bad = Predictions(np.array([2, 1]), np.array([np.nan, 0.2]), np.array([0, 0]))
    with pytest.raises(DataError, match="m2.csv: id 2: proba is NaN"):
        stack_predictions("dev_seen", {"m1": good, "m2": bad}, {"m2": "m2.csv"})


def test_partial_dev_coverage_is_allowed_and_recorded(make_folder) -> None:
    folder = make_folder()
    folder.noisy("A", 2.0)
    folder.noisy("B", 1.0)
    extra = {"id": 123456, "img": "img/123456.png", "label": 1, "text": "t"}
    with open(folder.gt_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(extra) + "\n")
    result = ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out", method="ra")
    assert result.record["dev_coverage"] == {"predicted": 80, "ground_truth": 81}


def test_family_resolution(tmp_path) -> None:
    models = ["O36", "O50", "U__a", "U__b", "V"]
    assert resolve_families(models) == {"O36": ["O36"], "O50": ["O50"], "U": ["U__a", "U__b"], "V": ["V"]}
    assert resolve_families(models, "regex:^([A-Z]+)") == {
        "O": ["O36", "O50"],
        "U": ["U__a", "U__b"],
        "V": ["V"],
    }
    assert resolve_families(models, "none")["U__a"] == ["U__a"]
    (tmp_path / "families.json").write_text(json.dumps({"OSCAR": ["O36", "O50"]}))
    assert resolve_families(models, "auto", tmp_path)["OSCAR"] == ["O36", "O50"]
    (tmp_path / "families.json").write_text(json.dumps({"OSCAR": ["O36", "O99"]}))
    with pytest.raises(ConfigError, match=r"families\.json: family 'OSCAR' names 'O99'"):
        resolve_families(models, "auto", tmp_path)
    with pytest.raises(ConfigError, match="in both"):
        resolve_families(models, {"a": ["V"], "b": ["V"]})


def test_threshold_uses_real_class_counts_unless_told_otherwise() -> None:
    # 2 positives, 8 negatives. Real counts: predicting only the top score positive is best.
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    threshold, acc = decision_threshold(y, s)
    brute = max(((s >= t) == y).mean() for t in s)
    assert acc == pytest.approx(brute) == pytest.approx(0.9)
    assert ((s >= threshold) == y).mean() == pytest.approx(brute)
    # vilio's 250/250 weighs both classes equally: (TPR + TNR) / 2 peaks at t = 0.7 (TPR 1, TNR 7/8).
    vilio_threshold, vilio_acc = decision_threshold(y, s, class_counts=(250, 250))
    assert vilio_threshold == pytest.approx(0.7) and vilio_acc == pytest.approx((1 + 7 / 8) / 2)


def test_cli_writes_outputs_and_reports_errors(make_folder, capsys) -> None:
    folder = make_folder()
    folder.noisy("A", 2.0)
    folder.noisy("B", 1.0)
    out = folder.root / "cli_out"
    args = [
        "ensemble",
        str(folder.pred_dir),
        "--gt",
        str(folder.gt_path),
        "--out",
        str(out),
        "--method",
        "opt",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    assert sorted(p.name for p in out.glob("*")) == [
        "FIN_dev_seen.csv",
        "FIN_test_seen.csv",
        "FIN_test_unseen.csv",
        "weights.json",
    ]
    assert json.loads((out / "weights.json").read_text())["optimizer"] == "coordinate"
    (folder.pred_dir / "A_test_unseen.csv").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    assert "A_test_unseen.csv: missing" in capsys.readouterr().err


def test_splits_are_discovered_and_a_single_model_passes_through(make_folder) -> None:
    folder = make_folder(sizes={"dev_seen": 40, "test_seen": 30})  # no test_unseen anywhere
    only = folder.noisy("only", 2.0)
    result = ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out")
    assert sorted(result.files) == ["dev_seen", "test_seen"]
    assert result.dev_auroc == pytest.approx(roc_auc_score(folder.labels["dev_seen"], only["dev_seen"]))
    with pytest.raises(DataError, match=r"only_test_unseen\.csv: missing"):
        ensemble_folder(
            folder.pred_dir, folder.gt_path, folder.root / "o2", splits=("dev_seen", "test_unseen")
        )


def test_test_labels_carry_the_dev_share_over_when_run_b_scores_are_shifted(make_folder) -> None:
    folder = make_folder(seed=3)
    rng = np.random.default_rng(0)
    # Run (a) models score dev in [0.1, 0.35]; run (b) models score the test splits in [0.7, 0.95].
    # Every split is ranked perfectly, yet every test score lies above any dev threshold.
    for name in ("A", "B"):
        for split, y in folder.labels.items():
            base = 0.1 if split == "dev_seen" else 0.7
            proba = base + 0.2 * y + rng.uniform(0, 0.05, len(y))
            write_predictions(folder.pred_dir / f"{name}_{split}.csv", folder.ids[split], proba)
    outcome = {}
    for rule in ("threshold", "rate"):
        result = ensemble_folder(
            folder.pred_dir, folder.gt_path, folder.root / rule, method="sx", test_labels=rule
        )
        assert result.dev_accuracy == 1.0 and result.record["final"]["test_labels"] == rule
        outcome[rule] = {}
        for split in ("test_seen", "test_unseen"):
            final = read_predictions(result.files[split])
            truth = dict(zip(folder.ids[split].tolist(), folder.labels[split].tolist(), strict=True))
            outcome[rule][split] = accuracy_score([truth[int(i)] for i in final.ids], final.label)
            assert result.record["final"]["hateful_share"][split] == pytest.approx(final.label.mean())
    assert outcome["threshold"] == {"test_seen": 0.5, "test_unseen": 0.5}  # vilio's rule: all hateful
    assert outcome["rate"] == {"test_seen": 1.0, "test_unseen": 1.0}


def test_top_share_labels_take_the_highest_scores_and_break_ties_by_id() -> None:
    from memeguard.ensemble.folder import top_share_labels

    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, 40).astype(float) / 5  # many ties
    ids = rng.permutation(40) + 100
    for share in (0.0, 0.26, 0.5, 1.0):
        labels = top_share_labels(scores, ids, share)
        chosen = sorted(range(40), key=lambda k: (-scores[k], ids[k]))[: round(share * 40)]
        assert set(np.flatnonzero(labels)) == set(chosen)


def test_unknown_test_label_rule_is_refused(make_folder) -> None:
    folder = make_folder()
    folder.noisy("O", 1.0)
    with pytest.raises(ConfigError, match="test label rule"):
        ensemble_folder(folder.pred_dir, folder.gt_path, folder.root / "out", test_labels="median")
    assert not (folder.root / "out").exists()


def test_prior_rule_labels_as_many_test_memes_as_the_models_expect(make_folder) -> None:
    folder = make_folder(seed=4)
    rng = np.random.default_rng(1)
    for split in (
        "test_seen",
        "test_unseen",
    ):  # test_unseen is less hateful than dev, as in HM (37 % vs 50 %)
        share = 0.5 if split == "test_seen" else 0.3
        folder.labels[split] = rng.permutation(
            (np.arange(folder.sizes[split]) < share * folder.sizes[split]) * 1
        )
    # Run (a) squeezes dev into [0.0001, 0.0016]; run (b)'s test probabilities are calibrated (near 0 or 1).
    for name in ("A", "B"):
        for split, y in folder.labels.items():
            noise = rng.uniform(0, 0.01, len(y))
            proba = 0.0001 + 0.001 * y + noise / 20 if split == "dev_seen" else 0.01 + 0.98 * y - noise / 2
            write_predictions(folder.pred_dir / f"{name}_{split}.csv", folder.ids[split], proba)
    accuracy_by_rule = {}
    for rule in ("threshold", "rate", "prior"):
        result = ensemble_folder(
            folder.pred_dir, folder.gt_path, folder.root / rule, method="sx", test_labels=rule
        )
        final = read_predictions(result.files["test_unseen"])
        truth = dict(
            zip(folder.ids["test_unseen"].tolist(), folder.labels["test_unseen"].tolist(), strict=True)
        )
        accuracy_by_rule[rule] = accuracy_score([truth[int(i)] for i in final.ids], final.label)
    n = folder.sizes["test_unseen"]
    assert accuracy_by_rule["threshold"] == pytest.approx(
        0.3, abs=1 / n
    )  # every meme above the dev threshold
    assert accuracy_by_rule["rate"] == pytest.approx(0.8, abs=1 / n)  # dev's 50 % where 30 % are hateful
    assert accuracy_by_rule["prior"] >= 1 - 2 / n  # the models' mean probability finds the 30 %
