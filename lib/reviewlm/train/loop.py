"""The per-worker training function, the same for both tasks (Ray Train, DDP, AMP on GPU)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import nullcontext
from functools import partial

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import Checkpoint

STATE = "train_state.pt"


def load_model(task: str, path: str):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    if task == "mlm":
        return AutoModelForMaskedLM.from_pretrained(path, use_safetensors=True)
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=5, use_safetensors=True,
        id2label={i: f"{i + 1} stars" for i in range(5)}, label2id={f"{i + 1} stars": i for i in range(5)})


class MLMCollate(NumpyBatchCollateFn):
    """Masks a batch of token blocks with transformers' MLM collator (whole words if asked)."""

    def __init__(self, tokenizer, mlm_probability: float, whole_word: bool, seed: int):
        from transformers import DataCollatorForLanguageModeling

        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability,
                                                        whole_word_mask=whole_word, seed=seed)
        # its own generator: `torch_mask_tokens`, called directly, would use torch's global one
        self.collator.generator = torch.Generator().manual_seed(seed)
        self.whole_word = whole_word

    def __call__(self, batch: dict) -> dict:
        inputs, labels = self.collator.torch_mask_tokens(
            torch.as_tensor(batch["input_ids"]), special_tokens_mask=torch.as_tensor(batch["special_tokens_mask"]),
            offset_mapping=torch.as_tensor(batch["offset_mapping"]) if self.whole_word else None)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": labels}


class StarsCollate(NumpyBatchCollateFn):
    """Token ids, attention mask and 0-4 star labels as tensors."""

    def __call__(self, batch: dict) -> dict:
        return {k: torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "labels")}


def _all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def evaluate(model, shard, collate, batch_size: int, device, autocast, want_predictions: bool = False):
    """Token-weighted mean loss over the shards of all workers (and predictions if asked)."""
    model.eval()
    loss_sum = count = 0.0
    preds, labels = [], []
    with torch.inference_mode():
        for batch in shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate, device=device):
            with autocast():
                out = model(**batch)
            n = float((batch["labels"] != -100).sum())
            loss_sum += float(out.loss) * n
            count += n
            if want_predictions:
                preds.append(out.logits.argmax(-1).cpu().numpy())
                labels.append(batch["labels"].cpu().numpy())
    loss_sum, count = _all_sum([loss_sum, count], device)
    model.train()
    loss = loss_sum / max(count, 1.0)
    if not want_predictions:
        return loss, None
    local = (np.concatenate(preds) if preds else np.zeros(0, int), np.concatenate(labels) if labels else np.zeros(0, int))
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        local = (np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered]))
    return loss, local


def train_func(config: dict) -> None:
    """Train on this worker's shard; report eval metrics and a checkpoint every epoch."""
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from reviewlm.models import resolve_model

    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    model_path = resolve_model(config["model"])  # on this node: its own cache
    device = ray.train.torch.get_device()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_model(config["task"], model_path)
    model = ray.train.torch.prepare_model(model)
    precision = config["precision"]
    use_amp = device.type == "cuda" and precision in ("fp16", "bf16")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if use_amp else nullcontext()

    scaler = torch.amp.GradScaler(enabled=use_amp and precision == "fp16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.01)
    total = config["total_steps"]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * total), total)
    if config["task"] == "mlm":
        # Masks from generators of their own, not from torch's global one, which dropout draws
        # from while Ray Data collates in a background thread: the same masks every run. A
        # fresh evaluation collator each time: the same masks for every evaluation.
        collate = MLMCollate(tokenizer, config["mask_probability"], config["whole_word"],
                             config["seed"] + 1 + ctx.get_world_rank())
        eval_collate = partial(MLMCollate, tokenizer, config["mask_probability"], config["whole_word"], config["seed"])
    else:
        collate = StarsCollate()
        eval_collate = StarsCollate

    epoch, step, history = 0, 0, {"before": None, "epochs": [], "restarts": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, STATE), weights_only=True)
            unwrap(model).load_state_dict(load_model(config["task"], d).state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, step, history = state["epoch"], state["step"], state["history"]
        history["restarts"].append({"from_epoch": epoch, "from_step": step})

    train_shard, eval_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("eval")
    bs = config["batch_size"]
    if history["before"] is None:
        loss, _ = evaluate(model, eval_shard, eval_collate(), bs, device, autocast)
        history["before"] = {"eval_loss": loss, "perplexity": _ppl(loss)}
    while epoch < config["epochs"] and step < total:
        losses, timer = [], None
        for batch in train_shard.iter_torch_batches(batch_size=bs, collate_fn=collate, device=device,
                                                    local_shuffle_buffer_size=4 * bs,
                                                    local_shuffle_seed=config["seed"] + epoch):
            with autocast():
                loss = model(**batch).loss
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(float(loss))
            if timer is None:  # the first step warms up: time the ones after it
                timer, timed_from = time.perf_counter(), len(losses)
            step += 1
            if step >= total:
                break
        epoch += 1
        elapsed = time.perf_counter() - timer if timer else 0.0
        samples = (len(losses) - timed_from) * bs * ctx.get_world_size() if timer else 0
        train_loss = _all_sum([sum(losses), len(losses)], device)
        loss, _ = evaluate(model, eval_shard, eval_collate(), bs, device, autocast)
        history["epochs"].append({"epoch": epoch, "step": step, "train_loss": train_loss[0] / max(train_loss[1], 1),
                                  "eval_loss": loss, "perplexity": _ppl(loss),
                                  "samples_per_s": round(samples / elapsed, 2) if elapsed else None})
        metrics = {"epoch": epoch, "step": step, "eval_loss": loss, "history": json.dumps(history)}
        if config["task"] == "stars" and (epoch >= config["epochs"] or step >= total):
            test_loss, (preds, labels) = evaluate(model, ray.train.get_dataset_shard("test"), eval_collate(), bs,
                                                  device, autocast, want_predictions=True)
            metrics["test"] = json.dumps({"loss": test_loss, "predictions": preds.tolist(), "labels": labels.tolist()})
        with tempfile.TemporaryDirectory() as d:
            if ctx.get_world_rank() == 0:
                unwrap(model).save_pretrained(d, safe_serialization=True)
                tokenizer.save_pretrained(d)
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "epoch": epoch, "step": step, "history": history}, os.path.join(d, STATE))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d) if ctx.get_world_rank() == 0 else None)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))
