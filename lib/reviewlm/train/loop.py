"""The per-worker training function, the same for both tasks (Ray Train, DDP, AMP on GPU)."""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from types import SimpleNamespace

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import Checkpoint

from reviewlm.metrics import perplexity
from reviewlm.models import mask_head
from reviewlm.train.masking import BlockMasker

STATE = "train_state.pt"
LENGTH_GROUP = 8  # reviews: batches of similar length are cut from this many batches at a time
SHUFFLE_ROWS = 2048  # each epoch's rows come from a seeded shuffle buffer of at least this many


@dataclass(frozen=True)
class LoopConfig:
    """What every worker needs to train (the driver sets scaling and storage).

    Made by `derive`: what the driver worked out is named in its signature, every other
    field comes from `TrainArgs` (its fields and properties) by name.
    """

    task: str
    model: str  # portable: a hub id, or an absolute or s3:// path
    epochs: int
    total_steps: int
    batch_size: int
    learning_rate: float
    seed: int
    precision: str
    whole_word: bool
    mask_probability: float
    labels: tuple[str, ...] = ()  # classes in id order (not mlm)
    class_weights: tuple[float, ...] = ()  # per class, for the training loss; () is unweighted
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 512  # a classifier's tokens per text; saved as its tokenizer's model_max_length

    @classmethod
    def derive(cls, args, *, model: str, total_steps: int, labels: tuple[str, ...] = (),
               class_weights: tuple[float, ...] = ()) -> LoopConfig:
        worked_out = {"model": model, "total_steps": total_steps, "labels": labels, "class_weights": class_weights}
        named = {f.name: getattr(args, f.name) for f in fields(cls)
                 if f.name not in worked_out and hasattr(args, f.name)}
        return cls(**named, **worked_out)


def load_model(task: str, path: str, labels: tuple[str, ...] = ()):
    """A masked LM, or a sequence classifier whose config names `labels` (what pipelines print);
    a classifier head of another size (say, a star model tuned for relevance) starts anew."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    if task == "mlm":
        return AutoModelForMaskedLM.from_pretrained(path, use_safetensors=True)
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)},
        ignore_mismatched_sizes=True, use_safetensors=True)


class MaskedLMLoss(torch.nn.Module):
    """A masked LM whose vocabulary head runs only at the labelled (masked) positions.

    The same loss and gradients as the model's own forward, which projects every position
    onto the vocabulary though only the ~15-20% masked ones have a label. `logits` are those
    of the labelled positions, in order. Saving goes through `model`, a standard masked LM.
    """

    def __init__(self, model):
        super().__init__()
        self.model, self.head = model, mask_head(model)

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        where = labels != -100
        logits = self.head(hidden[where])
        return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits.float(), labels[where]), logits=logits)


class WeightedClassifierLoss(torch.nn.Module):
    """A classifier whose training loss weighs each class (`--class-weights balanced`).

    Evaluation (`eval()` mode) reports the plain loss, comparable across runs and recomputable
    from the saved model.
    """

    def __init__(self, model, weights: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("weight", torch.tensor(weights, dtype=torch.float32))

    def forward(self, input_ids, attention_mask, labels):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=self.weight if self.training else None)
        return SimpleNamespace(loss=loss, logits=logits)


def trainable(config: LoopConfig, model) -> torch.nn.Module:
    """What the optimizer and DDP see: for mlm, the model with its head only where masked;
    for weighted classes, the model with its weighted loss."""
    if config.task == "mlm" and mask_head(model) is not None:
        return MaskedLMLoss(model)
    return WeightedClassifierLoss(model, config.class_weights) if config.class_weights else model


class SparseEmbeddingGrad:
    """The word embedding's gradient as only the rows a batch uses, on CPU workers.

    A classifier's batch touches a few hundred of its vocabulary's rows, yet a dense gradient
    (47 MB for the starter) is allocated, page-faulted and all-reduced by DDP every step.
    Sparse, DDP (gloo) all-reduces the used rows only; calling this after `backward()` writes
    them into a dense gradient kept from step to step, for clipping and the fused AdamW: the
    same gradient. Off for an embedding tied to an output head (masked LM: dense anyway) and
    on GPUs (NCCL has no sparse all-reduce). Set it up before DDP wraps the model.
    """

    def __init__(self, model, device: torch.device):
        embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
        tied = output is not None and output.weight is embedding.weight
        self.embedding = embedding if device.type == "cpu" and not tied else None
        if self.embedding is not None:
            self.embedding.sparse = True
            self.dense, self.rows = torch.zeros_like(embedding.weight), None

    def __call__(self) -> None:
        grad = self.embedding.weight.grad if self.embedding is not None else None
        if grad is None or not grad.is_sparse:
            return
        grad = grad.coalesce()
        if self.rows is not None:  # the rows the last step wrote: everything else is still zero
            self.dense.index_fill_(0, self.rows, 0.0)
        self.rows = grad.indices()[0]
        self.dense.index_copy_(0, self.rows, grad.values())
        self.embedding.weight.grad = self.dense


class MLMCollate(NumpyBatchCollateFn):
    """Masks a batch of token blocks anew every time, from this collator's own generator."""

    def __init__(self, tokenizer, probability: float, whole_word: bool, seed: int):
        self.masker = BlockMasker(tokenizer, probability, whole_word)
        # its own generator: dropout draws from torch's global one while Ray Data collates in a thread
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch: dict) -> dict:
        inputs, labels = self.masker(batch["input_ids"], batch["word_ids"], self.generator)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": labels}


class TensorCollate(NumpyBatchCollateFn):
    """A batch as int64 tensors (copies): token blocks, or reviews padded to the batch's longest."""

    def __init__(self, pad_id: int = 0):
        self.pad_id = pad_id

    def __call__(self, batch: dict) -> dict:
        ids = batch["input_ids"]
        if ids.dtype == object:  # reviews of different lengths
            lengths = np.array([len(x) for x in ids])
            padded = np.full((len(ids), lengths.max(initial=1)), self.pad_id, np.int64)
            for row, x in enumerate(ids):
                padded[row, :len(x)] = x
            mask = np.arange(padded.shape[1]) < lengths[:, None]
            batch = {**batch, "input_ids": padded, "attention_mask": mask}
        out = {k: torch.tensor(np.asarray(v), dtype=torch.long) for k, v in batch.items()}
        out.setdefault("attention_mask", torch.ones_like(out["input_ids"]))
        return out


@dataclass
class Run:
    """One worker's model, optimizer and schedule, and where they train."""

    config: LoopConfig
    model: torch.nn.Module  # what trains (DDP-wrapped); `hf` is the Hugging Face model inside it
    hf: object
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    dense_grads: SparseEmbeddingGrad
    device: torch.device
    use_amp: bool
    rank: int
    world_size: int
    epoch: int = 0
    step: int = 0
    history: dict = field(default_factory=lambda: {"before": None, "epochs": [], "restarts": []})
    tally: object = None  # the driver's progress tally (reviewlm.progress), told by rank 0
    told: float = 0.0

    def autocast(self):
        dtype = torch.float16 if self.config.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype) if self.use_amp else nullcontext()


def set_up(config: LoopConfig) -> Run:
    """Load the model on this worker and wrap it for DDP; AdamW with a linear warm-up and decay."""
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup
    from transformers.utils import logging

    from reviewlm.models import resolve_model

    logging.disable_progress_bar()  # a checkpoint every epoch: no "Writing model shards" bar in the logs
    torch.manual_seed(config.seed)
    ctx = ray.train.get_context()
    model_path = resolve_model(config.model)  # on this node: its own cache
    device = ray.train.torch.get_device()
    hf = load_model(config.task, model_path, config.labels)
    dense_grads = SparseEmbeddingGrad(hf, device)
    model = ray.train.torch.prepare_model(trainable(config, hf))
    use_amp = device.type == "cuda" and config.precision in ("fp16", "bf16")
    optimizer = adamw(model, config.learning_rate, config.weight_decay)
    total = config.total_steps
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if config.task != "mlm":  # what loads the classifier cuts texts as training did
        tokenizer.model_max_length = config.max_length
    return Run(config, model, hf, tokenizer, optimizer, scheduler,
               torch.amp.GradScaler(enabled=use_amp and config.precision == "fp16"), dense_grads, device, use_amp,
               ctx.get_world_rank(), ctx.get_world_size())


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with its fused kernel (CPU and GPU): one pass over all parameters, not one per tensor."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def restore(run: Run) -> None:
    """Continue from Ray Train's latest checkpoint, if there is one (a restart or --resume)."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return
    with checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, STATE), weights_only=True)
        run.hf.load_state_dict(load_model(run.config.task, d, run.config.labels).state_dict())
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.epoch, run.step, run.history = state["epoch"], state["step"], state["history"]
    run.history["restarts"].append({"from_epoch": run.epoch, "from_step": run.step})


def full_batches(chunks, size: int):
    """Numpy batches re-cut so that each but the last holds a multiple of `size` rows.

    Ray Data's shuffling iterator may hand out a short batch mid-stream (at a block
    boundary), at places that differ between shards; cut as they come, ranks holding equal
    shards would make different numbers of steps, and DDP would wait forever.
    """
    carry = None
    for chunk in chunks:
        if carry is not None:
            chunk = {k: np.concatenate([carry[k], v]) for k, v in chunk.items()}
        n = len(chunk["input_ids"]) // size * size
        carry = {k: v[n:] for k, v in chunk.items()}
        if n:
            yield {k: v[:n] for k, v in chunk.items()}
    if carry is not None and len(carry["input_ids"]):
        yield carry


def batches(run: Run, shard, collate):
    """This epoch's training batches on this worker's device, shuffled with a seed per epoch.

    Megabatches of `LENGTH_GROUP` batches come from a seeded local shuffle of `SHUFFLE_ROWS`
    rows at least (the shard's blocks are in a seeded random order already). Masked LM: they
    are cut in order (blocks are of equal length). Reviews: batches of similar lengths (like
    transformers' `group_by_length`): each megabatch is sorted by length, cut, and its batches
    taken in a seeded random order. A shard of n rows makes ceil(n / batch size) batches, so
    ranks with equal shards step in lockstep.
    """
    bs, seed = run.config.batch_size, run.config.seed + run.epoch
    rng = np.random.default_rng(seed)
    megas = shard.iter_batches(batch_size=LENGTH_GROUP * bs, batch_format="numpy",
                               local_shuffle_buffer_size=max(LENGTH_GROUP * bs, SHUFFLE_ROWS), local_shuffle_seed=seed)
    for mega in full_batches(megas, bs):
        n = len(mega["input_ids"])
        if run.config.task == "mlm":
            groups = [np.arange(i, min(i + bs, n)) for i in range(0, n, bs)]
        else:
            order = np.argsort([len(x) for x in mega["input_ids"]], kind="stable")
            groups = [order[i:i + bs] for i in rng.permutation(range(0, n, bs))]
        for g in groups:
            yield {k: v.to(run.device) for k, v in collate({k: v[g] for k, v in mega.items()}).items()}


def train_epoch(run: Run, shard, collate) -> tuple[float, float | None]:
    """One pass over this worker's shard (or up to the step budget): mean loss, samples/s."""
    bs, losses, timer = run.config.batch_size, [], None
    run.model.train()  # dropout on: a model loaded from a checkpoint comes in eval mode
    for batch in batches(run, shard, collate):
        with run.autocast():
            loss = run.model(**batch).loss
        run.scaler.scale(loss).backward()
        run.dense_grads()
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        losses.append(float(loss.detach()))
        if timer is None:  # the first step warms up: time the ones after it
            timer, timed_from = time.perf_counter(), len(losses)
        run.step += 1
        tell(run, sum(losses) / len(losses))
        if run.step >= run.config.total_steps:
            break
    tell(run, sum(losses) / max(len(losses), 1), now=True)
    elapsed = time.perf_counter() - timer if timer else 0.0
    samples = (len(losses) - timed_from) * bs * run.world_size if timer else 0
    total, count = _all_sum([sum(losses), len(losses)], run.device)
    return total / max(count, 1), (round(samples / elapsed, 2) if elapsed else None)


def tell(run: Run, loss: float, now: bool = False) -> None:
    """Rank 0 tells the driver's progress tally the step and this epoch's mean loss so far,
    at most once a second (or `now`)."""
    clock = time.monotonic()
    if run.rank == 0 and run.tally is not None and (now or clock - run.told >= 1.0):
        run.tally.set.remote({"step": run.step, "loss": loss})
        run.told = clock


def evaluate(run: Run, shard) -> dict:
    """Loss (per masked token, or per review) and accuracy over the shards of all workers.

    The plain module, not DDP's wrapper: its forward syncs with the other ranks, and eval
    shards may differ in size. Logits come for the labelled positions (masked tokens, or
    every review).
    """
    model = unwrap(run.model)
    model.eval()
    loss_sum = correct = count = 0.0
    with torch.inference_mode():
        for batch in shard.iter_torch_batches(batch_size=run.config.batch_size, device=run.device,
                                              collate_fn=TensorCollate(run.tokenizer.pad_token_id)):
            with run.autocast():
                out = model(**batch)
            labels = batch["labels"]
            scored = labels != -100
            n = float(scored.sum())
            loss_sum += float(out.loss) * n
            predicted = out.logits.argmax(-1)
            predicted = predicted if predicted.shape == labels[scored].shape else predicted[scored]
            correct += float((predicted == labels[scored]).sum())
            count += n
    loss_sum, correct, count = _all_sum([loss_sum, correct, count], run.device)
    model.train()
    loss = loss_sum / max(count, 1.0)
    metrics = {"eval_loss": loss, "eval_accuracy": correct / max(count, 1.0)}
    if run.config.task == "mlm":
        metrics["perplexity"] = perplexity(loss)
    return metrics


def save_and_report(run: Run, metrics: dict) -> None:
    """Rank 0 saves the model, tokenizer and training state; every rank reports the scalars."""
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if run.rank == 0:
            run.hf.save_pretrained(d, safe_serialization=True)
            run.tokenizer.save_pretrained(d)
            torch.save({"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
                        "epoch": run.epoch, "step": run.step, "history": run.history}, os.path.join(d, STATE))
            checkpoint = Checkpoint.from_directory(d)
        ray.train.report({"epoch": run.epoch, "step": run.step, **metrics}, checkpoint=checkpoint)


def seeded(run: Run) -> NumpyBatchCollateFn:
    """This epoch's collator, and its random draws (dropout, masks) from seeds of its own: a run
    restarted from a checkpoint trains the epochs after it exactly as an uninterrupted run."""
    cfg = run.config
    dropout, masks = np.random.SeedSequence([cfg.seed, run.rank, run.epoch]).generate_state(2).tolist()
    torch.manual_seed(dropout)
    if cfg.task == "mlm":  # fresh masks every pass over the training blocks
        return MLMCollate(run.tokenizer, cfg.mask_probability, cfg.whole_word, masks)
    return TensorCollate(run.tokenizer.pad_token_id)


def train_func(config: dict) -> None:
    """Train on this worker's shard; evaluate, checkpoint and report every epoch."""
    config = dict(config)
    tally = config.pop("tally", None)
    run = set_up(LoopConfig(**config))
    run.tally = tally
    restore(run)
    cfg = run.config
    train_shard, eval_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("eval")
    if run.history["before"] is None:
        run.history["before"] = evaluate(run, eval_shard)
    while run.epoch < cfg.epochs and run.step < cfg.total_steps:
        train_loss, rate = train_epoch(run, train_shard, seeded(run))
        run.epoch += 1
        metrics = evaluate(run, eval_shard)
        run.history["epochs"].append({"epoch": run.epoch, "step": run.step, "train_loss": train_loss,
                                      **metrics, "samples_per_s": rate})
        save_and_report(run, metrics)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def _all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()

