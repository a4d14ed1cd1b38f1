"""`classifier:` recipe steps: a saved text classifier as a filter, against transformers' own pipeline."""

import json

import numpy as np
import pandas as pd
import pytest
from reviewlm.filters.recipe import parse_recipe
from reviewlm.filters.stage import filter_reviews
from reviewlm.synth import synth_rows

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

# Reviews as people write them: typos, emoji, other languages, one far longer than the
# model's 32 tokens (cut as the pipeline cuts it)
REAL = [
    "Bought these Nike running shoes for my half marathon training. After 200 miles the cushioning is "
    "still there, the heel counter hasn't collapsed and my knees thank me. Runs half a size small, so "
    "order up. The laces are too short to do a runner's loop, which is annoying, but I'd buy them again.",
    "nike hoodie pilled after 2 washes smh",
    "Adidas sent the wrong size TWICE. Customer service was polite but useless. Returning.",
    "Love love love these Puma sneakers 😍😍 so comfy",
    "Not bad at all for the price. Nike socks, thin but they breathe.",
    "The Under Armour shirt shrank a full size in the dryer even on low heat. Disappointed.",
    "Meh. Adidas track pants, fit is ok, color is more grey than black.",
    "Zapatillas Nike muy cómodas, llegaron rápido. Recomendadas.",
    "Qualität der Adidas Jacke ist top, nur die Ärmel sind etwas lang.",
    "5 stars!!! my son wears his Nike shoes every day to school",
    "Stitching came loose on the Puma cap within a week... for $30 I expected better",
    "runs small. returned. nike should fix their sizing chart",
    "Perfect gift, my husband loves the Under Armour hoodie, warm without being bulky.",
    "The Nike shoes squeak on every step on hard floors. Cute though.",
    "I've owned five pairs of these Adidas sneakers over the years and this batch feels cheaper: thinner "
    "insole, glue visible at the toe, and the tongue slides to the side all day long.",
]


def classifier_dir(tiny: str, folder, max_length: int = 32):
    """A 5-star classifier of the tiny model's shape, its weights drawn with a seed at a wider
    spread than an untrained model's (std 0.1, not 0.02: with those, every text gets the same
    probabilities), saved as `train` saves one: the tokenizer's `model_max_length` is the
    length it was trained with."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    labels = [str(k) for k in range(1, 6)]
    config = AutoConfig.from_pretrained(tiny, num_labels=5, id2label=dict(enumerate(labels)),
                                        label2id={v: i for i, v in enumerate(labels)}, initializer_range=0.1)
    torch.manual_seed(3)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(folder)
    return folder


def test_a_classifier_step_labels_the_rows_the_steps_before_it_keep_as_the_pipeline_does(ray_cluster, tiny,
                                                                                          tmp_path):
    from transformers import pipeline

    model = classifier_dir(tiny, tmp_path / "stars")
    rows = [{"id": f"real-{i}", "text": t} for i, t in enumerate(REAL)]
    synth = synth_rows(400, seed=12, min_words=5, max_words=60).to_pylist()
    rows += [{"id": r["id"], "text": r["text"]} for r in synth]
    rows += [{"id": "null", "text": None}, {"id": "blank", "text": "  "}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = (f"all:\n  - non_null\n  - brand\n  - classifier: {{model: {model}, keep: [4, 5], min_score: 0.38}}\n"
              "  - length: {min_words: 3}\n")
    stats = filter_reviews([str(tmp_path / "in.jsonl")], str(tmp_path / "out"), recipe=parse_recipe(recipe))
    kept, rejected = (pd.read_parquet(tmp_path / "out" / r).set_index("id") for r in ("kept", "rejected"))
    assert [f.name for f in stats.filters] == ["non_null", "brand", "classifier", "length"]
    funnel = {f.name: f for f in stats.filters}
    assert funnel["classifier"].dropped > 20 and funnel["classifier"].passed > 20

    # the model saw exactly the rows the steps before it kept
    every = pd.concat([kept, rejected])
    seen = every[~every["dropped_by"].isin(["non_null", "brand"])]
    assert every["classifier_label"].notna().sum() == len(seen) == funnel["classifier"].seen
    assert seen["classifier_label"].notna().all()

    # the same label and probability as transformers' own pipeline, outside Ray
    classify = pipeline("text-classification", model=str(model), truncation=True)
    want = pd.DataFrame(classify(list(seen["text"]), batch_size=8), index=seen.index)
    same = (want["label"] == seen["classifier_label"]).mean()
    assert same >= 0.99, same
    agree = want["label"] == seen["classifier_label"]
    assert np.allclose(want["score"][agree], seen["classifier_score"][agree], atol=1e-3)
    assert seen.index.str.startswith("real-").sum() >= 12 and seen["classifier_label"].nunique() >= 2

    # the step keeps a row when its label is one of `keep` with at least `min_score`
    decided = seen[seen["dropped_by"].isna() | (seen["dropped_by"] == "classifier")]
    passes = decided["classifier_label"].isin(["4", "5"]) & (decided["classifier_score"] >= 0.38)
    assert (passes == decided["dropped_by"].isna()).all()

    # annotate mode: every parsed row with a text is labelled, and would_keep is drop mode's kept
    annotated = filter_reviews([str(tmp_path / "in.jsonl")], str(tmp_path / "ann"), recipe=parse_recipe(recipe),
                               mode="annotate")
    rows_out = pd.read_parquet(tmp_path / "ann" / "kept").set_index("id")
    assert annotated.would_keep == stats.kept and rows_out["classifier_label"].notna().sum() == len(rows) - 1


def test_two_named_classifiers_and_a_label_the_model_lacks(ray_cluster, tiny, tmp_path):
    model = classifier_dir(tiny, tmp_path / "stars")
    texts = REAL + synth_rows(200, seed=4, min_words=5, max_words=40)["text"].to_pylist()
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    recipe = (f"all:\n  - classifier: {{model: {model}, keep: ['2', 5]}}\n"
              f"  - not:\n      classifier: {{model: {model}, keep: [2], name: again}}\n")
    stats = filter_reviews([str(tmp_path / "in.jsonl")], str(tmp_path / "out"), recipe=parse_recipe(recipe))
    rows = pd.concat([pd.read_parquet(tmp_path / "out" / r) for r in ("kept", "rejected")])
    labelled = rows[rows["again_label"].notna()]
    assert len(labelled) == stats.filters[0].passed and (labelled["again_label"] == labelled["classifier_label"]).all()
    dropped = rows[rows["dropped_by"] == "not(again)"]
    assert len(dropped) > 5 and (dropped["again_label"] == "2").all()
    assert stats.kept > 5 and set(rows.loc[rows["dropped_by"].isna(), "classifier_label"]) == {"5"}

    (tmp_path / "bad.yaml").write_text(f"classifier: {{model: {model}, keep: [6]}}\n")
    res = run_cli("filter", tmp_path / "in.jsonl", "--output", tmp_path / "bad", "--recipe", tmp_path / "bad.yaml")
    assert res.returncode == 2 and "'6' is not a label of" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "bad").exists()


def test_a_gpu_classifier_step_is_planned_with_a_batch_size(ray_cluster, tiny, tmp_path):
    """Ray Data refuses a GPU map without a batch size (seen on an H200, where `filter --use-gpu`
    failed so); the plan is built here, on no GPU, without running it."""
    import ray
    from reviewlm.filters.stage import GPU_CALL_ROWS, route

    model = str(classifier_dir(tiny, tmp_path / "stars"))
    recipe = parse_recipe(f"all:\n  - non_null\n  - classifier: {{model: {model}, keep: [5]}}\n")
    ds = route(ray.data.from_items([{"text": "fine"}]), recipe, "drop", {"classifier": model}, use_gpu=True)
    op = ds._logical_plan.dag.input_dependencies[0]
    assert "RowClassifier" in op.name
    assert (op.ray_remote_args["num_gpus"], op.batch_size) == (1, GPU_CALL_ROWS)


def test_a_small_input_is_cut_into_pieces_for_every_cpu_actor(ray_cluster):
    """A read piece is one call of a CPU classifier actor (Ray Data fuses them): a file under
    `--split-mb` is cut into two pieces per actor; GPU actors are fed by read tasks instead."""
    from types import SimpleNamespace

    from reviewlm.filters.stage import FUSED_PIECE_BYTES, MIN_PIECE_BYTES, piece_bytes

    one_mb = SimpleNamespace(files=[SimpleNamespace(size=1_000_000)])
    assert piece_bytes(one_mb, 64 << 20, True, None) == 250_000  # the run's 2 CPUs: 2 actors
    assert piece_bytes(one_mb, 64 << 20, True, 5) == 100_000
    assert piece_bytes(one_mb, 64 << 20, False, None) == 64 << 20
    assert piece_bytes(one_mb, 100_000, True, None) == 100_000
    assert piece_bytes(SimpleNamespace(files=[SimpleNamespace(size=9_000)]), 64 << 20, True, None) == MIN_PIECE_BYTES
    dump = SimpleNamespace(files=[SimpleNamespace(size=10 << 30)])  # an actor call is at most 8 MB of reviews
    assert (piece_bytes(dump, 64 << 20, True, None), piece_bytes(dump, 64 << 20, False, None)) == (
        FUSED_PIECE_BYTES, 64 << 20)
