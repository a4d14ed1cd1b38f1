"""Fine-tuning on Ray Train with 2 CPU workers and tiny budgets."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from reviewlm.metrics import confusion_matrix, star_metrics
from reviewlm.models import resolve_model
from reviewlm.synth import write_synth
from reviewlm.train.data import counted, split_bucket, split_rows, tokenize_and_chunk, training_rows
from reviewlm.train.job import POLL_ENV, TrainArgs, _polled, train_model
from reviewlm.train.loop import MLMCollate
from reviewlm.train.masking import mask_eval_blocks

from tests.conftest import BIN, Killer, actor_pids, assert_one_line, kill_job_when, registered, run_job


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus"
    write_synth(str(path), 1200, seed=3)
    return str(path)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model("tiny"))


def test_whole_word_masking_masks_every_piece_of_a_word(tok):
    text = ["unbelievably breathable sneakers from underarmour feel weightless " * 8]
    chunk = tokenize_and_chunk({"text": np.array(text, dtype=object)}, tok, 32)
    assert chunk["input_ids"].dtype == chunk["word_ids"].dtype == np.int32  # 8 bytes a token
    batch = MLMCollate(tok, 0.3, whole_word=True, seed=1)(chunk)
    ids, labels = torch.as_tensor(chunk["input_ids"]), batch["labels"]
    masked = labels != -100
    assert masked.any() and (batch["input_ids"][masked] == tok.mask_token_id).all()
    assert (labels[masked] == ids[masked]).all()
    pieces = [tok.convert_ids_to_tokens(int(i)) for i in ids.flatten()]
    assert any(p.startswith("##") for p in pieces)
    flat = masked.flatten().tolist()
    for i, piece in enumerate(pieces):
        if piece.startswith("##") and i % 32:  # a continuation shares its word's fate
            assert flat[i] == flat[i - 1], (pieces[i - 1], piece)


def test_punctuation_is_a_word_of_its_own(tok):
    """BERT's whole-word masking: "comfortable." is two words; masking one never masks the other with it."""
    chunk = tokenize_and_chunk({"text": np.array(["Nike shoes are very comfortable."] * 64, dtype=object)}, tok, 8)
    tokens = tok.convert_ids_to_tokens(chunk["input_ids"][0].tolist())
    assert tokens == ["[CLS]", "nike", "shoes", "are", "very", "comfortable", ".", "[SEP]"]
    masker = MLMCollate(tok, 0.5, whole_word=True, seed=7)
    both = adjective_only = period_only = 0
    for _ in range(20):
        m = (masker(chunk)["labels"] != -100).numpy()
        adjective, period = m[:, 5], m[:, 6]
        both += int((adjective & period).sum())
        adjective_only += int((adjective & ~period).sum())
        period_only += int((period & ~adjective).sum())
        assert not m[:, [0, 7]].any()  # never a special token
    # drawn independently at 0.5 each: about a quarter of the blocks in each case
    assert min(both, adjective_only, period_only) > 0.15 * 64 * 20, (both, adjective_only, period_only)


def test_masking_leaves_the_stored_blocks_as_they_were(ray_cluster, tok):
    """Ray hands batches that are views of its object store: masks must go into copies."""
    chunk = tokenize_and_chunk({"text": np.array(["Nike running shoes are very comfortable."] * 200,
                                                 dtype=object)}, tok, 16)
    ds = ray.data.from_items([{"input_ids": a, "word_ids": w} for a, w in zip(chunk["input_ids"], chunk["word_ids"])])
    ds = ds.materialize()
    before = np.stack([r["input_ids"] for r in ds.iter_rows()])
    masker = MLMCollate(tok, 0.3, whole_word=True, seed=1)
    masked = 0
    for _ in range(2):
        for batch in ds.iterator().iter_torch_batches(batch_size=16, collate_fn=masker):
            masked += int((batch["input_ids"] == tok.mask_token_id).sum())
    after = np.stack([r["input_ids"] for r in ds.iter_rows()])
    assert masked > 100 and after.tobytes() == before.tobytes()


def test_eval_masks_do_not_depend_on_batching(tok):
    chunk = tokenize_and_chunk({"text": np.array(["Nike hoodies are warm and durable."] * 40, dtype=object)}, tok, 16)
    whole = mask_eval_blocks(chunk, tok, 0.2, True, seed=42)
    parts = [mask_eval_blocks({k: v[i:i + 3] for k, v in chunk.items()}, tok, 0.2, True, seed=42)
             for i in range(0, len(chunk["input_ids"]), 3)]
    for key in ("input_ids", "labels"):
        assert (np.concatenate([p[key] for p in parts]) == whole[key]).all()
    assert (whole["labels"] != -100).any()


def test_the_head_only_at_masked_positions_gives_the_full_models_loss_and_gradients(tok):
    from reviewlm.train.loop import MaskedLMLoss, load_model

    chunk = tokenize_and_chunk({"text": np.array(["Nike hoodies are warm, soft and durable!"] * 30, dtype=object)},
                               tok, 32)
    batch = MLMCollate(tok, 0.2, whole_word=True, seed=3)(chunk)
    model = load_model("mlm", resolve_model("tiny"))
    fast, full = MaskedLMLoss(model)(**batch), model(**batch)
    assert fast.loss.item() == pytest.approx(full.loss.item(), abs=1e-5)
    assert fast.logits.shape == (int((batch["labels"] != -100).sum()), model.config.vocab_size)
    grads = []
    for loss in (fast.loss, model(**batch).loss):
        model.zero_grad()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4, msg=name)


def _dense_and_sparse_ddp_steps(rank: int, port: int, model_path: str, tokens: list[str]):
    """One DDP rank (gloo): two training steps of the same classifier with a dense and with
    a sparse word-embedding gradient; the parameters must come out the same."""
    import copy

    import torch.distributed as dist
    from reviewlm.metrics import STARS
    from reviewlm.train.loop import SparseEmbeddingGrad, adamw, load_model
    from torch.nn.parallel import DistributedDataParallel
    from transformers import AutoTokenizer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    dense = load_model("stars", model_path, STARS).eval()  # no dropout: both models see the same forward
    sparse = copy.deepcopy(dense)
    dense_grads = SparseEmbeddingGrad(sparse, torch.device("cpu"))
    assert dense_grads.embedding.sparse
    runs = []
    for model, after_backward in ((dense, lambda: None), (sparse, dense_grads)):
        ddp = DistributedDataParallel(model)
        runs.append((ddp, adamw(ddp, 1e-3), after_backward))
    tok = AutoTokenizer.from_pretrained(model_path)
    for step in range(2):  # other words each step: the rows the last step wrote must not linger
        batch = tok(tokens[4 * step + 2 * rank:][:2], padding=True, return_tensors="pt")
        for ddp, optimizer, after_backward in runs:
            ddp(**batch, labels=torch.tensor([step, 4])).loss.backward()
            after_backward()
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 0.05)  # clips: scales the dense buffer in place
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert sparse.get_input_embeddings().weight.grad is None
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6, msg=name)
    dist.destroy_process_group()


def test_a_sparse_embedding_gradient_trains_as_the_dense_one_under_ddp():
    """Two gloo ranks with different reviews: DDP all-reduces the sparse rows, and the step
    (clipping, fused AdamW with weight decay on every row) is the dense one's."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tokens = ["Nike shoes are comfortable", "Ugly and expensive, returned them", "Durable boots", "Too small",
              "Adidas hoodie: warm and soft", "The zipper broke", "Cheap fabric", "Love it"]
    mp.spawn(_dense_and_sparse_ddp_steps, args=(port, resolve_model("tiny"), tokens), nprocs=2)


def test_masked_lm_keeps_a_dense_embedding_gradient():
    """Tied to the vocabulary head, the embedding's gradient is dense anyway: left as it is."""
    from reviewlm.train.loop import SparseEmbeddingGrad, load_model

    model = load_model("mlm", resolve_model("tiny"))
    assert SparseEmbeddingGrad(model, torch.device("cpu")).embedding is None
    assert not model.get_input_embeddings().sparse


def test_streamed_splits_and_counts_are_the_materialized_ones(corpus, tok):
    """What streaming computes per batch: each split's rows, and the tokens the chunker cuts."""
    import pyarrow as pa
    from reviewlm.io.sink import value_counts

    rows = pd.concat(pd.read_json(f, lines=True, dtype={"id": str}) for f in Path(corpus).glob("*.jsonl"))
    batch = training_rows(pa.table({"id": rows["id"], "text": rows["text"], "source": ["s"] * len(rows),
                                    "_row": range(len(rows)), "_raw": [None] * len(rows),
                                    "_error": pa.nulls(len(rows), pa.string())}), "mlm", seed=42)
    bounds = [("eval", 0.0, 0.1), ("train", 0.1, 1.0)]
    u = split_bucket(rows["id"].tolist(), 42)
    counts = counted(batch, "mlm", bounds, tok)
    for name, lo, hi in bounds:
        kept = split_rows(batch, name, bounds)
        assert kept["id"].to_pylist() == rows["id"][(u >= lo) & (u < hi)].tolist()
        assert value_counts(counts["_class"])[name] == len(kept)
    texts = split_rows(batch, "train", bounds)["text"].to_numpy(zero_copy_only=False)
    tokens = pa.compute.sum(counts["_tokens"]).as_py()
    assert tokens // 32 == len(tokenize_and_chunk({"text": texts}, tok, 32)["input_ids"])
    assert counts.num_rows == len(rows) and counts["error"].null_count == len(rows)


def test_the_controller_polls_more_workers_less_often_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv(POLL_ENV, raising=False)
    for workers, interval in ((1, "0.1"), (2, "0.1"), (16, "0.8"), (100, "2")):
        with _polled(workers):
            assert os.environ[POLL_ENV] == interval
        assert POLL_ENV not in os.environ  # the next job works out its own
    monkeypatch.setenv(POLL_ENV, "3")
    with _polled(2):
        assert os.environ[POLL_ENV] == "3"
    assert os.environ[POLL_ENV] == "3"


def test_star_metrics_by_hand():
    m = star_metrics(confusion_matrix([0, 2, 4, 4, 3], [0, 1, 4, 2, 3]))
    assert m.accuracy == 0.6 and m.within_one_accuracy == 0.8 and m.n == 5
    assert m.binary_accuracy == 0.8 and m.confusion_matrix[4][2] == 1 and m.per_class["1"]["f1"] == 1.0
    assert m.majority_baseline == 0.4


def independent_eval_loss(out, corpus: str, eval_fraction: float, tok, model_dir=None) -> float:
    """The eval loss of model/ (or `model_dir`) on eval/, outside Ray; eval/ checked against the eval rows."""
    import pyarrow.parquet as pq
    from transformers import AutoModelForMaskedLM

    blocks = pq.read_table(out / "eval").to_pydict()
    inputs, labels = (torch.tensor(np.array(blocks[k]), dtype=torch.long) for k in ("input_ids", "labels"))
    restored = torch.where(labels != -100, labels, inputs)
    assert (inputs[labels != -100] == tok.mask_token_id).all() and not (restored == tok.mask_token_id).any()
    rows = [json.loads(line) for f in sorted(Path(corpus).glob("*.jsonl")) for line in f.open()]
    held_out = [r["text"] for r in rows if split_bucket([r["id"]], 42)[0] < eval_fraction]
    stream = np.concatenate([np.asarray(ids, np.int32) for ids in tok(held_out)["input_ids"]]).tobytes()
    assert all(np.asarray(b, np.int32).tobytes() in stream for b in restored.tolist())  # eval rows, in order
    model = AutoModelForMaskedLM.from_pretrained(model_dir or out / "model").eval()
    with torch.inference_mode():
        logits = model(input_ids=inputs).logits
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100))


ARGS = dict(model="tiny", epochs=3, batch_size=16, lr=1e-3, chunk_size=32, num_workers=2)


@pytest.fixture(scope="module")
def mlm_run(ray_cluster, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "mlm"
    return out, train_model([corpus], str(out), TrainArgs(**ARGS))


@pytest.mark.slow
def test_mlm_lowers_perplexity_and_exports_a_fill_mask_model(mlm_run):
    from transformers import pipeline

    out, metrics = mlm_run
    assert metrics.epochs[-1].perplexity < metrics.before.perplexity
    assert [e.epoch for e in metrics.epochs] == [1, 2, 3] and metrics.restarts == ()
    assert all(e.samples_per_s > 0 for e in metrics.epochs)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["perplexity_before"] == metrics.before.perplexity
    assert (out / "_SUCCESS").exists() and (out / "loss.png").stat().st_size > 5000
    checkpoints = [p for p in (out / "checkpoints" / "run").glob("checkpoint_*") if p.is_dir()]
    assert 2 <= len(checkpoints) <= 3  # the best two, and the latest
    fill = pipeline("fill-mask", model=str(out / "model"))
    assert len(fill("Nike shoes are very [MASK].", top_k=5)) == 5
    assert not (out / "model" / "train_state.pt").exists()


@pytest.mark.slow
def test_reported_eval_loss_equals_an_independent_computation(mlm_run, corpus, tok):
    """A small eval set over several epochs: model/ (the best epoch) scored outside Ray on eval/."""
    out, metrics = mlm_run
    losses = [e.eval_loss for e in metrics.epochs]
    assert metrics.best.eval_loss == min(losses) and metrics.best.epoch == 1 + losses.index(min(losses))
    assert losses == sorted(losses, reverse=True)  # the eval data is no longer corrupted by training
    assert metrics.rows["eval_blocks"] < 60
    assert independent_eval_loss(out, corpus, 0.1, tok) == pytest.approx(metrics.best.eval_loss, rel=0.02)
    before = independent_eval_loss(out, corpus, 0.1, tok, model_dir=resolve_model("tiny"))
    assert before == pytest.approx(metrics.before.eval_loss, rel=0.02)


@pytest.mark.slow
def test_reported_eval_loss_on_a_larger_eval_set(ray_cluster, corpus, tok, tmp_path):
    out = tmp_path / "large-eval"
    metrics = train_model([corpus], str(out), TrainArgs(**{**ARGS, "epochs": 2, "max_steps": 6,
                                                           "eval_fraction": 0.5}))
    assert metrics.rows["eval_blocks"] > 150
    assert independent_eval_loss(out, corpus, 0.5, tok) == pytest.approx(metrics.best.eval_loss, rel=0.02)


@pytest.mark.slow
def test_a_short_run_reads_only_the_first_rows_its_steps_need(ray_cluster, tok, tmp_path):
    """`--max-steps` on a corpus far larger than its steps, default flags: the first rows in
    input order (as many as a hand count of the first 2,048 rows' tokens says), not the corpus."""
    write_synth(str(tmp_path / "synth"), 12_000, seed=5)
    rows = [json.loads(line) for line in next((tmp_path / "synth").glob("*.jsonl")).open()]
    rows.insert(10, {**rows[10], "id": "early", "text": None})  # read: quarantined
    rows.append({**rows[0], "id": "late", "text": None})  # never read
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "short"
    metrics = train_model([str(corpus)], str(out), TrainArgs(**{**ARGS, "max_steps": 2}))

    probe = [r["text"] for r in rows[:2048] if r["text"]]
    need = 1.25 * 2 * 16 * 2 * 32 / 0.9  # steps x batch x workers x chunk, before the eval split, with a margin
    n = int(np.ceil(need * 2048 / sum(len(x) for x in tok(probe)["input_ids"])))
    assert 100 < n < 1000 and metrics.rows["read"] == n and metrics.rows["quarantined"] == 1
    assert f"first {n:,} rows" in metrics.warnings[0] and not metrics.streaming
    assert metrics.epochs[-1].step == 2 and (out / "_SUCCESS").exists()
    quarantine = pd.read_parquet(out / "quarantine")
    assert quarantine["id"].tolist() == ["early"] and quarantine["error"].tolist() == ["no text"]
    held_out = [r["text"] for r in rows[:n] if r["text"] and split_bucket([r["id"]], 42)[0] < 0.1]
    stream = np.concatenate([np.asarray(ids, np.int32) for ids in tok(held_out)["input_ids"]]).tobytes()
    blocks = pd.read_parquet(out / "eval")
    assert all(np.where(np.asarray(y) != -100, y, x).astype(np.int32).tobytes() in stream
               for x, y in zip(blocks["input_ids"], blocks["labels"]))  # eval blocks of the first rows only
    assert len(blocks) == metrics.rows["eval_blocks"] > 0


@pytest.mark.slow
def test_a_short_classifier_run_reads_splits_and_tests_only_the_rows_its_steps_need(ray_cluster, tmp_path):
    """`--task stars --max-steps 2` on 12,000 reviews, default flags: the first rows in input
    order (2 steps x 16 x 2 workers over the train split's 64%, with a margin), stratified and
    tested, not the corpus."""
    write_synth(str(tmp_path / "synth"), 12_000, seed=6)
    out = tmp_path / "short"
    metrics = train_model([str(tmp_path / "synth")], str(out), TrainArgs(task="stars", model="tiny", max_steps=2))
    n = int(np.ceil(1.25 * 2 * 16 * 2 / 0.64))
    first = [json.loads(line) for line in next((tmp_path / "synth").glob("*.jsonl")).open()][:n]
    assert metrics.rows["read"] == n and f"first {n:,} rows" in metrics.warnings[0]
    classes = pd.Series([str(r["rating"]) for r in first]).value_counts()
    assert metrics.classes == {k: int(classes.get(k, 0)) for k in "12345"}
    test = pd.read_parquet(out / "test")
    assert set(test["id"]) <= {r["id"] for r in first} and metrics.test.n == len(test) == sum(
        v - round(0.8 * v) for v in classes)
    assert metrics.epochs[-1].step == 2


@pytest.mark.slow
def test_streaming_trains_every_block_each_epoch_and_reports_true_eval_losses(mlm_run, corpus, tok, tmp_path):
    """`--streaming on`: the train blocks are tokenized while the workers train; eval/ holds
    the eval rows' blocks, and the reported losses are recomputed from it outside Ray."""
    materialized, out = mlm_run[1], tmp_path / "stream"
    metrics = train_model([corpus], str(out), TrainArgs(**{**ARGS, "streaming": "on"}))
    assert metrics.streaming and not materialized.streaming
    assert {k: metrics.rows[k] for k in ("read", "train", "eval")} == \
        {k: materialized.rows[k] for k in ("read", "train", "eval")}
    assert abs(metrics.rows["train_blocks"] - materialized.rows["train_blocks"]) <= 5  # counted from tokens
    steps = metrics.epochs[0].step  # each epoch reads every train block once, in equal shares
    assert abs(steps - materialized.epochs[0].step) <= 1
    assert [e.step for e in metrics.epochs] == [steps, 2 * steps, 3 * steps]
    assert metrics.epochs[-1].perplexity < metrics.before.perplexity
    assert independent_eval_loss(out, corpus, 0.1, tok) == pytest.approx(metrics.best.eval_loss, rel=0.02)
    before = independent_eval_loss(out, corpus, 0.1, tok, model_dir=resolve_model("tiny"))
    assert before == pytest.approx(metrics.before.eval_loss, rel=0.02)


def epoch_losses(epochs) -> list[tuple[float, float]]:
    return [(e["train_loss"], e["eval_loss"]) if isinstance(e, dict) else (e.train_loss, e.eval_loss) for e in epochs]


@pytest.mark.slow
def test_a_worker_killed_mid_run_resumes_to_exactly_the_uninterrupted_run(mlm_run, corpus, tmp_path):
    """A second run of `mlm_run`'s arguments: once a checkpoint is registered, a training worker
    is SIGKILLed. Fixed shards per rank, and each epoch's draws (dropout, masks) from its own
    seeds: the run before the kill repeats the first exactly, and so do the epochs after it."""
    uninterrupted = mlm_run[1]
    steps = uninterrupted.epochs[0].step
    out = tmp_path / "fault"
    killer = Killer(lambda: actor_pids("RayTrainWorker"), ready=lambda: registered(out) >= 1)
    metrics = train_model([corpus], str(out), TrainArgs(**ARGS))
    killer.join(1)
    assert killer.killed, "training ended before a worker could be killed"
    [restart] = metrics.restarts
    assert restart["from_epoch"] >= 1 and restart["from_step"] == restart["from_epoch"] * steps
    assert [e.epoch for e in metrics.epochs] == [1, 2, 3] and metrics.epochs[-1].step == 3 * steps  # not started over
    assert metrics.before.perplexity == uninterrupted.before.perplexity
    assert epoch_losses(metrics.epochs) == epoch_losses(uninterrupted.epochs)
    assert len(set(epoch_losses(metrics.epochs))) == 3 and (out / "_SUCCESS").exists()  # the epochs differ


@pytest.mark.slow
def test_a_training_job_killed_as_a_whole_resumes(ray_cluster, mlm_run, corpus, tmp_path):
    """`mlm_run`'s arguments on the command line, the job killed (driver, its Ray, the workers)
    once a checkpoint is registered: `--resume` ends with the uninterrupted run's epochs and model."""
    uninterrupted, steps = mlm_run[0], mlm_run[1].epochs[0].step
    out = tmp_path / "killed"
    argv = [BIN / "reviewlm", "train", "--data", corpus, "--output", out, "--model", "tiny", "--epochs", 3,
            "--batch-size", 16, "--lr", 1e-3, "--chunk-size", 32, "--num-cpus", 2]
    kill_job_when(argv, ready=lambda: registered(out) >= 1)
    assert not (out / "_SUCCESS").exists() and not (out / "model").exists()
    # resumes from the last checkpoint the killed run registered, not from scratch
    res = run_job(*argv[1:])
    assert res.returncode == 2 and "already exists" in res.stderr
    res = run_job(*argv[1:], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics, want = (json.loads((o / "metrics.json").read_text()) for o in (out, uninterrupted))
    [restart] = metrics["restarts"]
    assert restart["from_epoch"] >= 1 and restart["from_step"] == restart["from_epoch"] * steps
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3] and metrics["epochs"][-1]["step"] == 3 * steps
    assert epoch_losses(metrics["epochs"]) == epoch_losses(want["epochs"]) and (out / "_SUCCESS").exists()
    weights = "model.safetensors"
    assert (out / "model" / weights).read_bytes() == (uninterrupted / "model" / weights).read_bytes()

    # an --overwrite killed once its own checkpoint is registered leaves the output as it was,
    # and `--overwrite --resume` continues it from that checkpoint
    before = {p: p.read_bytes() for p in [out / "metrics.json", out / "_SUCCESS", *(out / "model").iterdir()]}
    kill_job_when(argv + ["--overwrite"], ready=lambda: any(registered(d) for d in out.glob("_temporary/*")))
    assert {p: p.read_bytes() for p in before} == before
    res = run_job(*argv[1:], "--overwrite", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    replaced = json.loads((out / "metrics.json").read_text())
    [restart] = replaced["restarts"]
    assert restart["from_epoch"] >= 1 and replaced["epochs"][-1]["step"] == 3 * steps
    assert epoch_losses(replaced["epochs"]) == epoch_losses(want["epochs"])
    assert json.loads((out / "_SUCCESS").read_text())["run_id"] != json.loads(before[out / "_SUCCESS"])["run_id"]
    assert not (out / "_temporary").exists() and registered(out) >= 1


@pytest.mark.slow
def test_star_classifier_with_the_defaults_learns_from_1000_reviews(ray_cluster, tmp_path):
    """2 epochs with the default batch and learning rate on 1,000 reviews of 20-60 words: the
    best epoch's model (model/) beats the majority class clearly, also scored anew outside the job."""
    from transformers import pipeline

    data, out = tmp_path / "reviews", tmp_path / "stars"
    write_synth(str(data), 1000, seed=5, min_words=20, max_words=60)
    metrics = train_model([str(data)], str(out), TrainArgs(task="stars", model="starter", epochs=2))
    assert metrics.warnings and "optimizer steps" in metrics.warnings[0]  # 40 steps: said so
    test = metrics.test
    assert test.n > 150 and sum(map(sum, test.confusion_matrix)) == test.n
    assert test.accuracy > test.majority_baseline + 0.08, test
    assert test.binary_accuracy > 0.7 and test.within_one_accuracy >= test.accuracy
    saved = json.loads((out / "metrics.json").read_text())  # a classifier's epochs have no perplexity
    assert metrics.best.perplexity is None and "perplexity" not in saved["best"] and "perplexity_before" not in saved
    assert saved["test"]["accuracy"] == test.accuracy and saved["best"]["eval_loss"] == metrics.best.eval_loss
    assert metrics.best.eval_loss == min(e.eval_loss for e in metrics.epochs)
    assert (out / "confusion.png").exists() and abs(metrics.rows["train"] / 1000 - 0.64) < 0.01
    test_rows = pd.read_parquet(out / "test")  # 20% of every star class
    assert (abs(test_rows["label"].value_counts() - 0.2 * pd.Series(metrics.classes)) <= 1).all()
    classify = pipeline("text-classification", model=str(out / "model"))
    predicted = [p["label"] for p in classify(list(test_rows["text"]))]
    accuracy = np.mean(np.array(predicted) == test_rows["label"].to_numpy())
    # the same predictions (one may differ on a near-tie: the job pads per batch, the pipeline does not)
    assert len(test_rows) == test.n and accuracy == pytest.approx(test.accuracy, abs=1.01 / test.n)


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    (["--text-column", "body"], "no text column 'body'"),
    (["--task", "stars", "--rating-column", "stars"], "no rating column 'stars'"),
    (["--model", "no-such-org/no-such-model-xyz"], "cannot load model"),
    (["--model", "./missing-model-dir"], "does not exist"),
    (["--eval-fraction", "1.5"], "--eval-fraction must be between 0 and 1"),
    (["--task", "stars", "--streaming", "on"], "--streaming is for the mlm task"),
    (["--data", "s3://no-such-bucket/reviews/"], "no-such-bucket"),
])
def test_bad_training_input_exits_2(ray_cluster, corpus, tmp_path, argv, message):
    assert_one_line(run_job("train", "--data", corpus, "--output", tmp_path / "o", "--model", "tiny", *argv), message)


@pytest.mark.slow
@pytest.mark.parametrize("rows, argv, message", [
    ([{"id": i, "text": "Nike shoes are great", "rating": 5} for i in "abc"], [], "split is empty"),  # all train
    ([{"text": "Nike shoes are great", "rating": r} for r in (0, 7, 9)] * 20, ["--task", "stars"],
     "nothing in the training data could be read: all 60 rows quarantined"),
    ([{"id": f"r{i}", "text": f"Nike shoes number {i} are great"} for i in range(60)], ["--chunk-size", "64"],
     "the eval text makes no block of --chunk-size 64 tokens"),
], ids=["empty split", "ratings outside 1-5", "eval split shorter than a block"])
def test_training_data_that_cannot_train_exits_2(ray_cluster, tmp_path, rows, argv, message):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_job("train", "--data", data, "--output", tmp_path / "o", "--model", "tiny", *argv)
    assert res.returncode == 2, res.stderr[-3000:]
    ours = [line for line in res.stderr.splitlines() if line.startswith("reviewlm: error: ")]
    assert len(ours) == 1 and message in ours[0] and "Traceback" not in res.stderr  # among Ray's log lines
    assert not (tmp_path / "o").exists()


def test_ranks_with_equal_shards_make_the_same_number_of_steps():
    """Ray Data's shuffling iterator hands out short batches mid-stream at places that differ
    by shard (seen: 128, 109, 128, ..., 18 and 128, ..., 93, ..., 34 for two shards of 1,279):
    re-cut, every shard of n rows makes ceil(n / 16) batches, each full but the last."""
    from reviewlm.train.loop import full_batches

    def chunks(sizes):
        start = 0
        for size in sizes:
            yield {"input_ids": np.arange(start, start + size), "labels": np.arange(start, start + size)}
            start += size

    for sizes in ([128] * 4 + [109] + [128] * 5 + [18], [128] * 5 + [93] + [128] * 4 + [34]):
        cut = [len(b) for chunk in full_batches(chunks(sizes), 16)
               for b in np.array_split(chunk["input_ids"], range(16, len(chunk["input_ids"]), 16))]
        rows = np.concatenate([c["input_ids"] for c in full_batches(chunks(sizes), 16)])
        assert len(cut) == -(-1279 // 16) and all(n == 16 for n in cut[:-1]) and cut[-1] == 1279 % 16
        assert (rows == np.arange(1279)).all()  # every row once, in order


def test_the_loop_config_is_derived_from_the_training_arguments():
    from reviewlm.train.loop import LoopConfig

    args = TrainArgs(task="stars", epochs=4, batch_size=8, whole_word_mask=0, seed=7, precision="bf16")
    config = LoopConfig.derive(args, model="/abs/model", total_steps=12, labels=("1", "2"))
    assert (config.task, config.epochs, config.batch_size, config.seed, config.precision) == ("stars", 4, 8, 7, "bf16")
    assert config.learning_rate == 2e-4 and not config.whole_word and config.mask_probability == 0.15
    assert (config.model, config.total_steps, config.labels, config.class_weights) == ("/abs/model", 12, ("1", "2"), ())
