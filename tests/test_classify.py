"""`--task classify`: any labelled texts or text pairs, stratified, quarantined, named classes."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from reviewlm.metrics import classification_metrics, confusion_matrix, imbalance
from reviewlm.synth import ESCI, KINDS, synth_pairs, write_synth

from tests.conftest import run_job

PAIR = ["--text-column", "query", "--text-pair-column", "product_title", "--label-column", "esci_label"]


def test_classification_metrics_by_hand():
    m = classification_metrics(confusion_matrix([0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 2, 0], n=3), ["a", "b", "c"])
    assert m.accuracy == pytest.approx(4 / 6) and m.majority_baseline == 0.5 and m.n == 6
    assert m.per_class["a"] == {"precision": 2 / 3, "recall": 2 / 3, "f1": pytest.approx(2 / 3), "support": 3}
    assert m.per_class["b"]["precision"] == 0.5 and m.per_class["c"]["recall"] == 0.5
    assert m.macro_f1 == pytest.approx(np.mean([2 / 3, 2 / 3, 2 / 3])) and m.confusion_matrix[2][0] == 1


def test_imbalance_is_named_above_five_to_one():
    assert imbalance({"a": 50, "b": 10}) is None
    assert "--class-weights balanced" in imbalance({"a": 51, "b": 10, "c": 30})


def test_unbalanced_classes_are_named_and_balanced_weights_follow_their_counts(capsys):
    from reviewlm.options import TrainArgs
    from reviewlm.train.job import _unbalanced, _weights

    classes = {"Exact": 600, "Substitute": 300, "Complement": 0, "Irrelevant": 60}
    plain, balanced = TrainArgs(task="classify"), TrainArgs(task="classify", class_weights="balanced")
    warned = _unbalanced(classes, plain)
    assert len(warned) == 1 and "'Exact' has 600 rows, 'Irrelevant' 60" in warned[0]
    assert capsys.readouterr().err.startswith("reviewlm: warning: classes are unbalanced")
    assert _unbalanced(classes, balanced) == [] and _weights(classes, plain) == ()
    assert _weights(classes, balanced) == pytest.approx((960 / (3 * 600), 960 / (3 * 300), 0.0, 960 / (3 * 60)))


def stratified(table: pa.Table, bounds) -> tuple[dict, int]:
    """The split of every row of `table` (id, label) as the job makes it, its passes run on
    the table itself: the counting pass's classes and bins, then `split_points`' histogram and
    gather passes, then `assign_splits`."""
    from reviewlm.io.sink import value_counts
    from reviewlm.train import data

    n = table.num_rows
    rows = data.training_rows(table.append_column("source", pa.array(["s"] * n)).append_column(
        "_row", pa.array(range(n))).append_column("_raw", pa.nulls(n, pa.string())).append_column(
        "_error", pa.nulls(n, pa.string())).append_column("text", pa.array(["t"] * n)), "classify", seed=1)
    counted = data.counted(rows, "classify", bounds)
    passes = []

    def histogram(points):
        passes.append("histogram")
        counts = data.narrowed(rows, points)
        return {p: np.array([counts.get((*p, b), 0) for b in range(1 << data.BIN_BITS)]) for p in points}

    def gather(points):
        passes.append("gather")
        found = data.gathered(rows, points).to_pylist()
        return {p: [(r["_h"], r["id"]) for r in found if (r["label"], r["prefix"], r["depth"]) == p] for p in points}

    cuts = data.split_points(value_counts(counted["_class"]), value_counts(counted["_bin"]), bounds, histogram,
                             gather)
    split = data.assign_splits(rows, bounds, cuts)
    return dict(zip(split["id"].to_pylist(), split["split"].to_pylist())), passes.count("histogram")


BOUNDS = [("train", 0.0, 0.64), ("eval", 0.64, 0.8), ("test", 0.8, 1.0)]


@pytest.mark.parametrize("bits, gather", [(10, 100_000), (2, 5)], ids=["bins gathered", "bins narrowed first"])
def test_stratified_split_cuts_every_class_in_the_same_proportions(monkeypatch, bits, gather):
    """Each class cut at ranks round(0.64 n) and round(0.8 n) of its rows in (hash, id) order,
    exactly, whatever the rows' order; with 4 bins a level and at most 5 rows gathered per bin,
    bins of more are narrowed by further passes first, to the same split."""
    from reviewlm.train import data

    monkeypatch.setattr(data, "BIN_BITS", bits)
    monkeypatch.setattr(data, "GATHER", gather)
    sizes = {"a": 7, "b": 50, "c": 333, "d": 1, "e": 2}
    ids = [f"r{i}" for i in range(sum(sizes.values()))]
    labels = [label for label, n in sizes.items() for _ in range(n)]
    table = pa.table({"id": ids, "label": labels})
    split, narrowed = stratified(table, BOUNDS)
    assert (narrowed > 0) == (gather == 5)
    for label, n in sizes.items():
        mine = [i for i, lab in zip(ids, labels) if lab == label]
        assert Counter(split[i] for i in mine) == {k: v for k, v in {
            "train": round(0.64 * n), "eval": round(0.8 * n) - round(0.64 * n), "test": n - round(0.8 * n)}.items()
            if v}
        order = sorted(mine, key=lambda i: (int(data.split_hash([i], 1)[0]), i))  # the definition, by hand
        cut = [0, round(0.64 * n), round(0.8 * n), n]
        assert [split[i] for i in order] == [name for k, (name, _, _) in enumerate(BOUNDS)
                                             for _ in range(cut[k + 1] - cut[k])]
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    assert stratified(shuffled, BOUNDS)[0] == split


def test_relevance_label_depends_on_both_texts():
    rows = synth_pairs(400, seed=2).to_pylist()
    for r in rows:
        query, title = r["query"].lower(), r["product_title"].lower()
        kind = next(k for k in sorted(KINDS, key=len, reverse=True) if k in query)
        if r["esci_label"] in ("Exact", "Substitute"):
            assert kind in title
    labels = Counter(r["esci_label"] for r in rows)
    assert set(labels) == set(ESCI) and labels.most_common(1)[0][0] == "Exact"


@pytest.mark.slow
def test_a_pair_classifier_with_the_defaults_learns_relevance(ray_cluster, tmp_path):
    """1,000 (query, product title) pairs, 2 epochs, the defaults: clearly above the majority
    class; class names in the model's config, so transformers' pipeline prints them."""
    from transformers import pipeline

    write_synth(str(tmp_path / "pairs"), 1000, seed=8, kind="relevance")
    res = run_job("train", "--task", "classify", "--data", tmp_path / "pairs", "--output", tmp_path / "o",
                  "--model", "starter", "--epochs", "2", *PAIR)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["labels"] == ["Complement", "Exact", "Irrelevant", "Substitute"]  # found, sorted
    # 40 steps learn the pairs that need both texts most (Exact: the same brand and kind) first
    assert test["accuracy"] > test["majority_baseline"] + 0.15 and test["per_class"]["Exact"]["f1"] > 0.8, test
    assert set(test["per_class"]) == set(ESCI) and (tmp_path / "o" / "confusion.png").exists()
    assert "macro-F1" in res.stdout and "test: accuracy" in res.stdout
    rows = pd.read_parquet(tmp_path / "o" / "test")  # the test split, stratified: 20% of every class
    counts = pd.Series(metrics["classes"])
    assert (abs(rows["label"].value_counts().reindex(counts.index) - 0.2 * counts) <= 1).all()
    classify = pipeline("text-classification", model=str(tmp_path / "o" / "model"))
    predicted = [p["label"] for p in classify([{"text": q, "text_pair": t}
                                               for q, t in zip(rows["text"], rows["text_pair"])])]
    assert set(predicted) <= set(ESCI)
    accuracy = np.mean(np.array(predicted) == rows["label"].to_numpy())
    assert accuracy == pytest.approx(test["accuracy"], abs=1.01 / test["n"])


@pytest.mark.slow
def test_labels_outside_the_list_and_empty_labels_are_quarantined(ray_cluster, tmp_path):
    rows = synth_pairs(240, seed=3).to_pylist()
    rows[0]["esci_label"], rows[1]["esci_label"] = "", None
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    res = run_job("train", "--task", "classify", "--data", tmp_path / "d.jsonl", "--output", tmp_path / "o",
                  "--model", "tiny", "--epochs", "1", "--labels", "Exact,Substitute,Irrelevant",
                  "--class-weights", "balanced", *PAIR)
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if line.startswith("reviewlm: warning: ")]
    assert any("quarantined" in w and "is not one of the labels given" in w for w in warnings), res.stderr[-3000:]
    bad = pd.read_parquet(tmp_path / "o" / "quarantine")
    complements = [r["id"] for r in rows[2:] if r["esci_label"] == "Complement"]
    unknown = "label 'Complement' is not one of the labels given"
    assert Counter(bad["error"]) == {unknown: len(complements), "no label": 2,
                                     **{e: 1 for e in bad["error"] if e.startswith("invalid JSON")}}
    assert set(bad["id"]) >= set(complements) | {rows[0]["id"], rows[1]["id"]}
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["labels"] == ["Exact", "Substitute", "Irrelevant"] and metrics["rows"]["quarantined"] == len(bad)
    assert metrics["class_weights"][0] < metrics["class_weights"][2]  # Exact is the common class
    assert sum(metrics["classes"].values()) + len(bad) == metrics["rows"]["read"] == 241


@pytest.mark.slow
@pytest.mark.parametrize("edit, labels, message", [
    (None, ["--label-column", "grade"], "no label column 'grade'"),
    (lambda r: {**r, "esci_label": "Exact"}, ["--label-column", "esci_label"],
     "holds 1 class(es) among the usable rows (Exact)"),
    (None, [], "the classify task needs --label-column"),
    (None, ["--label-column", "esci_label", "--labels", "Exact"], "give two or more comma-separated class names"),
], ids=["missing label column", "one class only", "no label column given", "one label given"])
def test_classification_input_that_cannot_train_exits_2(ray_cluster, tmp_path, edit, labels, message):
    rows = [edit(r) if edit else r for r in synth_pairs(100, seed=1).to_pylist()]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_job("train", "--task", "classify", "--data", tmp_path / "d.jsonl", "--output", tmp_path / "o",
                  "--model", "tiny", *PAIR[:4], *labels)
    assert res.returncode == 2, res.stderr[-3000:]
    ours = [line for line in res.stderr.splitlines() if line.startswith("reviewlm: error: ")]
    assert len(ours) == 1 and message in ours[0] and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert not (tmp_path / "o").exists()
