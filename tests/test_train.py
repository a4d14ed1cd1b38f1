"""Fine-tuning on Ray Train with 2 CPU workers and tiny budgets."""

import json
import os

import numpy as np
import pytest
import torch

from reviewlm.models import resolve_model
from reviewlm.synth import write_synth
from reviewlm.train.data import tokenize_and_chunk
from reviewlm.train.job import TrainArgs, star_metrics, train_model
from reviewlm.train.loop import MLMCollate
from tests.conftest import BIN, Killer, actor_pids, assert_one_line, kill_job_when, run_cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    os.environ.setdefault("REVIEWLM_CACHE", str(tmp_path_factory.mktemp("cache")))
    path = tmp_path_factory.mktemp("data") / "corpus"
    write_synth(str(path), 1200, seed=3)
    return str(path)


def test_whole_word_masking_masks_every_piece_of_a_word():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny"))
    text = ["unbelievably breathable sneakers from underarmour feel weightless " * 8]
    chunk = tokenize_and_chunk({"text": np.array(text, dtype=object)}, tok, 32)
    batch = MLMCollate(tok, 0.3, whole_word=True, seed=1)(chunk)
    ids, labels = torch.as_tensor(chunk["input_ids"]), batch["labels"]
    masked = labels != -100
    assert masked.any() and (batch["input_ids"][masked] == tok.mask_token_id).all()
    pieces = [tok.convert_ids_to_tokens(int(i)) for i in ids.flatten()]
    assert any(p.startswith("##") for p in pieces)
    flat = masked.flatten().tolist()
    for i, piece in enumerate(pieces):
        if piece.startswith("##") and i % 32:  # a continuation shares its word's fate
            assert flat[i] == flat[i - 1], (pieces[i - 1], piece)


def test_star_metrics_by_hand():
    m = star_metrics(np.array([0, 1, 4, 2, 3]), np.array([0, 2, 4, 4, 3]))
    assert m["accuracy"] == 0.6 and m["within_one_accuracy"] == 0.8
    assert m["binary_accuracy"] == 0.8 and m["confusion_matrix"][4][2] == 1 and m["f1_per_class"]["1"] == 1.0


ARGS = dict(model="tiny", epochs=3, batch_size=16, lr=1e-3, chunk_size=32, num_workers=2)


@pytest.fixture(scope="module")
def mlm_run(ray_cluster, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "mlm"
    return out, train_model([corpus], str(out), TrainArgs(**ARGS))


@pytest.mark.slow
def test_mlm_lowers_perplexity_and_exports_a_fill_mask_model(mlm_run):
    from transformers import pipeline

    out, metrics = mlm_run
    assert metrics["epochs"][-1]["perplexity"] < metrics["perplexity_before"]
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3] and metrics["restarts"] == []
    assert all(e["samples_per_s"] > 0 for e in metrics["epochs"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["perplexity_before"] == metrics["perplexity_before"]
    assert (out / "_SUCCESS").exists() and (out / "loss.png").stat().st_size > 5000
    checkpoints = [p for p in (out / "checkpoints" / "run").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # the last two are kept
    fill = pipeline("fill-mask", model=str(out / "model"))
    assert len(fill("Nike shoes are very [MASK].", top_k=5)) == 5
    assert not (out / "model" / "train_state.pt").exists()


@pytest.mark.slow
def test_the_same_seed_trains_the_same_model(mlm_run, corpus, tmp_path):
    """Fixed shards per rank, own mask generators: a second run repeats the first exactly."""
    first, again = mlm_run[1], train_model([corpus], str(tmp_path / "again"), TrainArgs(**ARGS))
    assert again["perplexity_before"] == first["perplexity_before"]
    losses = [(e["train_loss"], e["eval_loss"]) for e in first["epochs"]]
    assert [(e["train_loss"], e["eval_loss"]) for e in again["epochs"]] == losses
    assert len(set(losses)) == 3  # and the epochs differ from each other


def checkpoints(out) -> list:
    return [p for p in (out / "checkpoints" / "run").glob("checkpoint_*") if p.is_dir()]


@pytest.mark.slow
def test_a_worker_killed_mid_run_resumes_from_the_last_checkpoint(mlm_run, corpus, tmp_path):
    steps = mlm_run[1]["epochs"][0]["step"]
    out = tmp_path / "fault"
    # two checkpoints on disk: the first is surely registered; then a training worker is SIGKILLed
    killer = Killer(lambda: actor_pids("RayTrainWorker"), ready=lambda: len(checkpoints(out)) >= 2)
    metrics = train_model([corpus], str(out), TrainArgs(**{**ARGS, "epochs": 4}))
    killer.join(1)
    assert killer.killed, "training ended before a worker could be killed"
    [restart] = metrics["restarts"]
    assert restart["from_epoch"] >= 1 and restart["from_step"] == restart["from_epoch"] * steps
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4]  # not started over
    assert metrics["epochs"][-1]["step"] == 4 * steps and (out / "_SUCCESS").exists()


@pytest.mark.slow
def test_a_training_job_killed_as_a_whole_resumes(mlm_run, corpus, tmp_path):
    steps = mlm_run[1]["epochs"][0]["step"]
    out = tmp_path / "killed"
    argv = [BIN / "reviewlm", "train", "--data", corpus, "--output", out, "--model", "tiny", "--epochs", 4,
            "--batch-size", 16, "--lr", 1e-3, "--chunk-size", 32, "--num-cpus", 2]
    kill_job_when(argv, ready=lambda: len(checkpoints(out)) >= 2)
    assert not (out / "_SUCCESS").exists() and not (out / "model").exists()
    # resumes from the last checkpoint the killed run registered (epoch 1 or 2), not from scratch
    res = run_cli(*argv[1:])
    assert res.returncode == 2 and "already exists" in res.stderr
    res = run_cli(*argv[1:], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    [restart] = metrics["restarts"]
    assert restart["from_epoch"] >= 1 and restart["from_step"] == restart["from_epoch"] * steps
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4]
    assert metrics["epochs"][-1]["step"] == 4 * steps and (out / "_SUCCESS").exists()


@pytest.mark.slow
def test_star_classifier_beats_the_majority_class(ray_cluster, corpus, tmp_path):
    out = tmp_path / "stars"
    metrics = train_model([corpus], str(out), TrainArgs(task="stars", model="tiny", epochs=4, batch_size=16,
                                                         lr=2e-3, max_length=32, num_workers=2))
    test = metrics["test"]
    assert test["n"] > 150 and sum(map(sum, test["confusion_matrix"])) == test["n"]
    assert test["accuracy"] > test["majority_baseline"] + 0.1, test
    assert test["within_one_accuracy"] >= test["accuracy"]
    assert (out / "confusion.png").exists()
    splits = metrics["rows"]
    assert abs(splits["train"] / sum(splits.values()) - 0.64) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["--text-column", "body"], "no text column 'body'"),
    (["--task", "stars", "--rating-column", "stars"], "no rating column 'stars'"),
    (["--model", "no-such-org/no-such-model-xyz"], "cannot load model"),
    (["--model", "./missing-model-dir"], "does not exist"),
    (["--eval-fraction", "1.5"], "--eval-fraction must be between 0 and 1"),
    (["--data", "s3://no-such-bucket/reviews/"], "no-such-bucket"),
])
def test_bad_training_input_exits_2(s3, corpus, tmp_path, argv, message):
    res = run_cli("train", "--data", corpus, "--output", tmp_path / "o", "--model", "tiny", *argv,
                  env={"HF_HUB_OFFLINE": "1"})
    assert_one_line(res, message)


@pytest.mark.slow
@pytest.mark.parametrize("rows, argv, message", [
    ([{"text": "Nike shoes are great", "rating": 5}] * 3, [], "split is empty"),
    ([{"text": "Nike shoes are great", "rating": r} for r in (0, 7, 9)] * 20, ["--task", "stars"],
     "no usable training rows"),
], ids=["empty split", "ratings outside 1-5"])
def test_training_data_that_cannot_train_exits_2(tmp_path, rows, argv, message):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("train", "--data", data, "--output", tmp_path / "o", "--model", "tiny", "--num-cpus", 2,
                  *argv, env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr[-3000:]
    ours = [line for line in res.stderr.splitlines() if line.startswith("reviewlm: error: ")]
    assert len(ours) == 1 and message in ours[0] and "Traceback" not in res.stderr  # among Ray's log lines
    assert not (tmp_path / "o").exists()
