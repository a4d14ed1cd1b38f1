"""The score job: exact agreement with transformers' fill-mask, word-set metrics, the report."""

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from reviewlm.errors import UsageError
from reviewlm.score.job import ScoreArgs, parse_models, score_models
from reviewlm.score.metrics import substitutions
from reviewlm.score.prompts import REFERENCE_PROMPTS, expand_templates, load_word_sets
from reviewlm.score.scorer import ClassifyScorer, CorpusScorer, MaskScorer, mask_words
from reviewlm.synth import ESCI, synth_pairs, write_synth

from tests.conftest import assert_one_line, run_job

WORDS = load_word_sets(None)
PROMPTS = REFERENCE_PROMPTS + ["The [MASK] from [MASK] are great.", "no mask here", "",
                               "very " * 600 + "[MASK]"]


def score_batch(path, prompts, k=10):
    scorer = MaskScorer("m", path, False, k, WORDS, 20)
    table = scorer({"prompt": np.array(prompts, dtype=object), "prompt_index": np.arange(len(prompts))})
    return {route: table.filter(pa.compute.equal(table["_route"], route)).to_pandas()
            for route in ("predictions", "masks", "prompts")}


def test_top_k_equals_the_fill_mask_pipeline(tiny):
    from transformers import pipeline

    fill = pipeline("fill-mask", model=tiny)
    out = score_batch(tiny, PROMPTS[:6])["predictions"]
    for i, prompt in enumerate(PROMPTS[:6]):
        expected = fill(prompt, top_k=10)
        expected = expected if isinstance(expected[0], list) else [expected]
        for m, fills in enumerate(expected):
            got = out[(out["prompt_index"] == i) & (out["mask_index"] == m)].sort_values("rank")
            assert got["token"].tolist() == [f["token_str"] for f in fills]
            assert np.abs(got["probability"].to_numpy() - [f["score"] for f in fills]).max() < 1e-4
            assert (got["prompt"] == prompt).all()


def test_bad_prompts_are_reported_with_a_reason(tiny):
    prompts = score_batch(tiny, PROMPTS)["prompts"].set_index("prompt_index").sort_index()
    assert list(prompts.index) == list(range(len(PROMPTS)))
    assert prompts.loc[6, "error"] == "no [MASK] in prompt"
    assert prompts.loc[7, "error"] == "empty prompt"
    assert "more than the model's limit of 512" in prompts.loc[8, "error"]
    assert prompts.loc[:5, "error"].isna().all() and prompts.loc[5, "n_masks"] == 2
    assert "[MASK]" not in prompts.loc[5, "filled"] and -1 <= prompts.loc[0, "filled_vader"] <= 1


def test_word_set_metrics_on_a_hand_made_distribution(tiny):
    scorer = MaskScorer("m", tiny, False, 3, WORDS, 20)
    scorer.word_ids = {"wanted": [10, 11], "unwanted": [12]}
    p = torch.full((30522,), 0.0)
    p[[12, 10, 5, 11, 7]] = torch.tensor([0.4, 0.3, 0.2, 0.05, 0.05])
    row = scorer._mask_metrics(0, 0, p, {12, 10, 5})
    assert row["wanted_share"] == pytest.approx(1 / 3) and row["unwanted_share"] == pytest.approx(1 / 3)
    assert row["wanted_mass"] == pytest.approx(0.3) and row["unwanted_mass"] == pytest.approx(0.4)
    assert row["first_wanted_rank"] == 2 and len(row["top_ids"]) == 1000


def test_scoring_is_deterministic(tiny):
    a, b = score_batch(tiny, REFERENCE_PROMPTS), score_batch(tiny, REFERENCE_PROMPTS[::-1])
    key = ["prompt", "mask_index", "rank"]
    a = a["predictions"].sort_values(key).reset_index(drop=True)
    b = b["predictions"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="prompt_index"), b.drop(columns="prompt_index"))


def test_corpus_masking_is_seeded_and_masks_whole_words(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    text = "Unbelievably breathable sneakers from Underarmour, worn daily for months. " * 3
    ids, labels = mask_words(text, "r1", 0.15, tok, 0)
    assert (ids, labels) == mask_words(text, "r1", 0.15, tok, 0)
    assert mask_words(text, "r2", 0.15, tok, 0) != (ids, labels)
    pieces = tok.convert_ids_to_tokens(tok(text)["input_ids"])
    masked = [lab != -100 for lab in labels]
    assert sum(masked) >= 4
    for i, piece in enumerate(pieces):
        if piece.startswith("##"):
            assert masked[i] == masked[i - 1]
    out = CorpusScorer("m", tiny, False)({"text": np.array([text], dtype=object), "id": np.array(["r1"])})
    row = out.to_pylist()[0]
    assert row["n_masked"] == sum(masked) and 0 <= row["correct_at_1"] <= row["correct_at_10"] <= row["n_masked"]


def test_substitutions_rank_rises_and_falls():
    masks = pd.DataFrame([
        {"model": "base", "prompt_index": 0, "mask_index": 0, "top_ids": [1, 2, 3, 8],
         "top_probs": [0.5, 0.3, 0.1, 0.01]},
        {"model": "tuned", "prompt_index": 0, "mask_index": 0, "top_ids": [2, 4, 1, 9],
         "top_probs": [0.6, 0.2, 0.1, 0.01]}])
    [entry] = substitutions(masks, "base", "tuned", str, n=2)  # a token outside a top list counts at its floor
    assert [r["token"] for r in entry["rose"]] == ["2", "4"] and entry["rose"][0]["delta"] == pytest.approx(0.3)
    assert [r["token"] for r in entry["fell"]] == ["1", "3"]


def test_the_summary_does_not_depend_on_the_order_rows_were_written_in():
    """Actors write their blocks in any order, and each write task sums its own: the sums are
    exact, so any cut into blocks in any order gives the same bits, those of math.fsum."""
    import math
    from collections import Counter

    from reviewlm.score.metrics import prompt_summary, summary_sums

    rng = np.random.default_rng(0)
    values = rng.random((5000, 5)) * np.logspace(-8, 0, 5000)[:, None]
    masks = pa.table({**{name: values[:, k] for k, name in enumerate(["wanted_share", "unwanted_share",
                                                                      "wanted_mass", "unwanted_mass"])},
                      "model": ["m"] * 5000, "first_wanted_rank": rng.integers(1, 50, 5000),
                      "_route": ["masks"] * 5000})
    prompts = pa.table({"model": ["m"] * 5000, "error": pa.nulls(5000, pa.string()),
                        "filled_vader": values[:, 4] - 0.5, "_route": ["prompts"] * 5000})
    rows = pa.concat_tables([masks, prompts], promote_options="default")
    summaries = []
    for order, size in [(np.arange(10000), 10000), (np.arange(10000)[::-1], 333), (rng.permutation(10000), 1000)]:
        shuffled = rows.take(order)
        sums = Counter()
        for i in range(0, 10000, size):
            sums.update(summary_sums(shuffled.slice(i, size)))
        summaries.append(prompt_summary(sums, ["m"]))
    assert summaries[0] == summaries[1] == summaries[2]
    m = summaries[0]["m"]
    assert m.wanted_share == math.fsum(values[:, 0]) / 5000 and m.masks_scored == m.prompts_scored == 5000
    assert m.mean_filled_vader == math.fsum(values[:, 4] - 0.5) / 5000
    assert m.median_first_wanted_rank == float(np.median(masks["first_wanted_rank"].to_numpy()))


def test_templates_models_and_word_sets(tmp_path):
    (tmp_path / "t.txt").write_text("{brand} {product} are very [MASK].\n")
    prompts = expand_templates(str(tmp_path / "t.txt"))
    assert "nike shoes are very [MASK]." in prompts and len(prompts) > 200
    assert parse_models(["base=starter", "tiny", "out/train_v2/model/"]) == {
        "base": "starter", "tiny": "tiny", "model": "out/train_v2/model/"}
    for bad in (["a=tiny", "a=starter"], ["../../escape=tiny"], ["a/b=tiny"], [".hidden=tiny"]):
        with pytest.raises(UsageError):
            parse_models(bad)
    (tmp_path / "w.yaml").write_text("wanted: [Comfy]\n")
    assert load_word_sets(str(tmp_path / "w.yaml"))["wanted"] == ["comfy"]
    (tmp_path / "bad.yaml").write_text("liked: [x]\n")
    with pytest.raises(UsageError):
        load_word_sets(str(tmp_path / "bad.yaml"))


@pytest.mark.slow
def test_two_models_prompts_and_corpus_end_to_end(ray_cluster, tiny, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(REFERENCE_PROMPTS + ["no mask here"]) + "\n")
    write_synth(str(tmp_path / "corpus"), 60, seed=9)
    # no model scores these (named last: the column check reads the first file)
    (tmp_path / "corpus" / "zz-broken.jsonl").write_text('{"id": "b1", "text": \n{"id": "b2"}\n')
    out = tmp_path / "score"
    summary = score_models({"base": "starter", "tiny": "tiny"}, str(out), prompts=PROMPTS[:5] + ["no mask here"],
                           corpus=[str(tmp_path / "corpus")], word_sets=WORDS, args=ScoreArgs(top_k=5, num_actors=1))
    preds = pd.read_parquet(out / "predictions")
    assert list(preds.columns[:6]) == ["model", "prompt", "prompt_index", "mask_index", "rank", "token"]
    assert len(preds) == 2 * 5 * 5 and set(preds["model"]) == {"base", "tiny"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["models"]["base"]["prompts_scored"] == 5 and saved["models"]["tiny"]["corpus"]["reviews"] == 60
    bad = pd.read_parquet(out / "quarantine")  # once, not per model
    assert len(bad) == saved["corpus_quarantined"] == summary.corpus_quarantined == 2 and "b2" in set(bad["id"])
    assert set(bad["error"].str.split(":").str[0]) == {"invalid JSON", "no text"}
    assert saved["invalid_prompts"] == [{"prompt_index": 5, "prompt": "no mask here", "error": "no [MASK] in prompt"}]
    assert len(saved["substitutions"]["tiny vs base"]) == 5
    assert 0 <= summary.models["base"].prompts.wanted_share <= 1 and summary.models["tiny"].corpus.reviews == 60
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "offline starter" in html and "no mask here" in html
    assert (out / "report.md").exists() and (out / "summary.png").stat().st_size > 5000
    assert len(list(out.glob("topk_*.png"))) == 5 and (out / "_SUCCESS").exists()


def scoring_tasks_finished() -> int:
    from ray.util.state import list_tasks

    return sum("EachModel" in t.name for t in list_tasks(filters=[("state", "=", "FINISHED")], limit=10_000))


@pytest.mark.slow
def test_scored_rows_are_written_while_the_actors_score(ray_cluster, tiny, tmp_path, monkeypatch):
    """Two actors hold both CPUs; the writes, which need none, take the scored blocks as they
    come: the first prompts are on storage while most blocks are still to be scored (a write
    that waits for a CPU gets one once every block is handed out, near the end), and the
    progress lines count them."""
    import re
    import threading

    n = 24_000
    (tmp_path / "p.txt").write_text("".join(f"Shoe {i} is very [MASK].\n" for i in range(n)))
    out, seen, stop = tmp_path / "out", [], threading.Event()

    def watch():
        while not stop.wait(0.2):
            if any(out.glob("_temporary/*/prompts/*.parquet")):
                seen.append(scoring_tasks_finished())
                return

    before = scoring_tasks_finished()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    monkeypatch.setenv("REVIEWLM_PROGRESS_S", "0.5")
    res = run_job("score", "--model", "t=tiny", "--prompts", tmp_path / "p.txt", "--output", out, "--top-k", 3)
    stop.set()
    watcher.join()
    assert res.returncode == 0, res.stderr[-3000:]
    total = scoring_tasks_finished() - before
    assert seen and seen[0] - before <= total / 2, (seen, before, total)
    done = [int(m.replace(",", "")) for m in re.findall(r"scoring t: ([\d,]+)/24,000 prompts \(", res.stdout)]
    assert any(0 < d < n for d in done), res.stdout
    assert len(pd.read_parquet(out / "prompts")) == n


@pytest.mark.slow
def test_prompt_files_on_s3_are_read_by_ray_data_and_numbered_across_files(s3, ray_cluster, tiny, tmp_path):
    """Two files of a directory on S3 (read by Ray Data, a task each), then the templates:
    every prompt scored once, numbered in file order, comments and blank lines skipped."""
    from reviewlm.score.prompts import gather_prompts

    s3.pipe("reviews/prompts/a.txt", b"# brand prompts\nNike shoes are very [MASK].\n\nno mask here\n")
    s3.pipe("reviews/prompts/b.txt", "Adidas socks are [MASK].\r\nPuma caps are [MASK] and [MASK].\r\n".encode())
    (tmp_path / "t.yaml").write_text("templates: ['{brand} {product} feel [MASK].']\nbrands: [Nike]\n"
                                     "products: [hats, gloves]\n")
    prompts = gather_prompts(["s3://reviews/prompts/"], str(tmp_path / "t.yaml"), corpus=False)
    assert len(prompts) == 6 and [f.count for f in prompts.files] == [2, 2]
    out = tmp_path / "out"
    summary = score_models({"tiny": "tiny"}, str(out), prompts=prompts, word_sets=WORDS,
                           args=ScoreArgs(top_k=3, num_actors=1, batch_size=2))
    scored = pd.read_parquet(out / "prompts").sort_values("prompt_index")
    assert scored["prompt"].tolist() == ["Nike shoes are very [MASK].", "no mask here", "Adidas socks are [MASK].",
                                         "Puma caps are [MASK] and [MASK].", "Nike hats feel [MASK].",
                                         "Nike gloves feel [MASK]."]
    assert scored["prompt_index"].tolist() == list(range(6))
    assert summary.models["tiny"].prompts.prompts_scored == 5
    assert summary.invalid_prompts == ({"prompt_index": 1, "prompt": "no mask here", "error": "no [MASK] in prompt"},)
    assert len(pd.read_parquet(out / "masks")) == 6  # one for each mask of the five valid prompts (two in one)


@pytest.mark.slow
def test_a_prompt_file_is_read_in_runs_enough_for_every_actor(ray_cluster, tmp_path):
    """1,000 prompts in one file (comments, blank lines and CRLF among them) are read in runs
    that start at kept byte offsets: the same prompts under the same numbers as one pass reads,
    in a block at least for each of three actors."""
    from reviewlm.score.prompts import gather_prompts

    ends = ["\r\n" if i % 7 == 0 else "\n" for i in range(1000)]
    text = "".join(("# a comment\n\n" if i % 50 == 0 else "") + f"Prompt {i} is [MASK].{end}"
                   for i, end in enumerate(ends))
    (tmp_path / "p.txt").write_bytes(text.encode())
    prompts = gather_prompts([str(tmp_path / "p.txt")], None, corpus=False)
    data = prompts.dataset(3).materialize()
    assert data.num_blocks() >= 3
    rows = data.to_pandas().sort_values("prompt_index")
    assert rows["prompt"].tolist() == [f"Prompt {i} is [MASK]." for i in range(1000)]
    assert rows["prompt_index"].tolist() == list(range(1000))


@pytest.mark.slow
def test_star_model_scores_reviews(ray_cluster, tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = tmp_path / "stars"
    AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=5).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(model_dir)
    write_synth(str(tmp_path / "corpus"), 80, seed=2)
    summary = score_models({"s": str(model_dir)}, str(tmp_path / "out"), prompts=[], args=ScoreArgs(task="stars"),
                           corpus=[str(tmp_path / "corpus")], word_sets=WORDS)
    stars = summary.models["s"].labels
    assert stars.rows == 80 and sum(map(sum, stars.metrics.confusion_matrix)) == 80
    assert stars.labels == ("1", "2", "3", "4", "5") and 0 <= stars.metrics.within_one_accuracy <= 1
    assert (tmp_path / "out" / "confusion_s.png").exists()


def relevance_model(tiny, path, seed: int):
    """A tiny pair classifier with the ESCI class names (its head drawn from `seed`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    names = list(ESCI)
    AutoModelForSequenceClassification.from_pretrained(
        tiny, num_labels=4, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    ).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(path)
    return str(path)


def test_class_probabilities_equal_the_text_classification_pipeline(tiny, tmp_path):
    """Pairs as {"text", "text_pair"}: the same label and every class's probability within 1e-4."""
    from transformers import pipeline

    model = relevance_model(tiny, tmp_path / "m", seed=0)
    rows = synth_pairs(40, seed=4).to_pylist()
    batch = {"id": np.array([r["id"] for r in rows], dtype=object),
             "text": np.array([r["query"] for r in rows], dtype=object),
             "text_pair": np.array([r["product_title"] for r in rows], dtype=object),
             "label": np.array([r["esci_label"] for r in rows[:30]] + [None] * 10, dtype=object)}
    ours = ClassifyScorer("m", model, False, micro_batch=8)(batch).to_pylist()
    classify = pipeline("text-classification", model=model, top_k=None)
    theirs = classify([{"text": r["query"], "text_pair": r["product_title"]} for r in rows])
    for mine, scores in zip(ours, theirs):
        probs = dict(mine["probabilities"])
        assert mine["predicted"] == scores[0]["label"]
        assert mine["probability"] == pytest.approx(scores[0]["score"], abs=1e-4)
        assert {s["label"]: pytest.approx(s["score"], abs=1e-4) for s in scores} == probs
    assert [m["label"] for m in ours] == [r["esci_label"] for r in rows[:30]] + [None] * 10
    for mine in ours[:30]:
        assert mine["nll"] == pytest.approx(-np.log(dict(mine["probabilities"])[mine["label"]]), rel=1e-6)
    assert all(m["nll"] is None for m in ours[30:])


@pytest.mark.slow
def test_two_pair_classifiers_side_by_side(ray_cluster, tiny, tmp_path):
    """`--task classify` on a labelled pair corpus: per-row classes for each model, metrics and a
    confusion plot per model, agreeing with the rows written."""
    write_synth(str(tmp_path / "pairs"), 120, seed=6, kind="relevance")
    models = {"a": relevance_model(tiny, tmp_path / "a", 1), "b": relevance_model(tiny, tmp_path / "b", 2)}
    res = run_job("score", "--task", "classify", "--model", f"a={models['a']}", "--model", f"b={models['b']}",
                  "--corpus", tmp_path / "pairs", "--text-column", "query", "--text-pair-column", "product_title",
                  "--label-column", "esci_label", "--output", tmp_path / "out")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = pd.read_parquet(tmp_path / "out" / "labels")
    for name in models:
        m, mine = summary["models"][name]["classify"], rows[rows["model"] == name]
        assert m["rows"] == m["n"] == len(mine) == 120 and m["labels"] == list(ESCI)
        assert m["accuracy"] == pytest.approx((mine["label"] == mine["predicted"]).mean())
        assert set(m["per_class"]) == set(ESCI) and 0 <= m["macro_f1"] <= 1
        assert sum(map(sum, m["confusion_matrix"])) == 120 and (tmp_path / "out" / f"confusion_{name}.png").exists()
        assert all(abs(sum(dict(p).values()) - 1) < 1e-6 for p in mine["probabilities"])
    assert "accuracy" in res.stdout and "Classes" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_report_renders_in_headless_chromium(ray_cluster, tiny, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (CI installs Debian's chromium)")
    score_models({"tiny": "tiny"}, str(tmp_path / "out"), prompts=REFERENCE_PROMPTS[:2], word_sets=WORDS)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
                    f"file://{tmp_path / 'out' / 'report.html'}"], check=True, capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # text and bars, not a blank page


@pytest.mark.parametrize("argv, message", [
    (["--model", "x=./no/such/model"], "does not exist"),
    (["--model", "x=tiny", "--task", "stars"], "the stars task scores texts: give --corpus"),
    (["--model", "=tiny"], "--model takes NAME=REF"),
    (["--model", "../../x=tiny"], "model name '../../x'"),
    (["--model", "x=tiny", "--prompts", "/no/such/prompts.txt"], "cannot read prompts"),
])
def test_bad_score_input_exits_2(ray_cluster, argv, message, tmp_path):
    assert_one_line(run_job("score", *argv, "--output", tmp_path / "o"), message)
