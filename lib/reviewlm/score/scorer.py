"""Ray Data actors that load their models once and score batches: prompts, corpora, classes.

Prompts are bucketed by length (sorted, then cut into micro-batches) so little padding is
computed, and the vocabulary head runs only at the mask positions. Each actor emits rows
for several outputs at once, told apart by a `_route` column (see RoutedParquetSink).
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from reviewlm.errors import UsageError
from reviewlm.filters.sentiment import analyzer
from reviewlm.metrics import STARS
from reviewlm.models import mask_head

if TYPE_CHECKING:
    import torch

SUBSTITUTION_TOP = 1000
# Texts per classifier forward pass: bench/gpu.py: 256 gives 1.3x the rows/s of 32 on a GPU
CPU_MICRO_BATCH, GPU_MICRO_BATCH = 32, 256
PREDICTIONS = pa.schema([("model", pa.string()), ("prompt", pa.string()), ("prompt_index", pa.int64()),
                         ("mask_index", pa.int32()), ("rank", pa.int32()), ("token", pa.string()),
                         ("token_id", pa.int64()), ("probability", pa.float64())])
MASKS = pa.schema([("model", pa.string()), ("prompt_index", pa.int64()), ("mask_index", pa.int32()),
                   ("wanted_share", pa.float64()), ("unwanted_share", pa.float64()),
                   ("wanted_mass", pa.float64()), ("unwanted_mass", pa.float64()),
                   ("first_wanted_rank", pa.int64()), ("top_ids", pa.list_(pa.int32())),
                   ("top_probs", pa.list_(pa.float32()))])
PROMPTS = pa.schema([("model", pa.string()), ("prompt_index", pa.int64()), ("prompt", pa.string()),
                     ("n_masks", pa.int32()), ("filled", pa.string()), ("filled_vader", pa.float64()),
                     ("error", pa.string())])
CORPUS = pa.schema([("model", pa.string()), ("id", pa.string()), ("n_masked", pa.int64()),
                    ("correct_at_1", pa.int64()), ("correct_at_10", pa.int64()), ("nll_sum", pa.float64())])
LABELS = pa.schema([("model", pa.string()), ("id", pa.string()), ("label", pa.string()),
                    ("predicted", pa.string()), ("probability", pa.float64()),
                    ("probabilities", pa.map_(pa.string(), pa.float64())), ("nll", pa.float64())])


def _inference(method):
    """`method` under torch's inference mode; torch is imported where the actor runs (the
    driver imports this module for its schemas, and needs no torch)."""
    @functools.wraps(method)
    def run(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return method(*args, **kwargs)

    return run


def length_groups(lengths: list[int], size: int) -> list[np.ndarray]:
    """Indices sorted by length (stably) and cut into micro-batches of `size`, so that each
    micro-batch is padded to about its own length."""
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + size] for i in range(0, len(order), size)]


class _ModelActor:
    def __init__(self, name: str, ref: str, use_gpu: bool, task: str = "mlm"):
        import torch
        from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

        from reviewlm.models import resolve_model

        torch.set_num_threads(1)  # one CPU per actor; the pool gives the parallelism
        path = resolve_model(ref)  # on this node: its own cache
        self.name = name
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.tok = AutoTokenizer.from_pretrained(path)
        cls = AutoModelForMaskedLM if task == "mlm" else AutoModelForSequenceClassification
        model = cls.from_pretrained(path, use_safetensors=True).eval().to(self.device)
        self.model = model.half() if self.device.type == "cuda" else model
        self.max_len = min(self.tok.model_max_length, getattr(model.config, "max_position_embeddings", 512))

    def micro_batches(self, texts: list[str], size: int, pairs: list[str] | None = None):
        """Indices of `texts` (or pairs), sorted by token length and cut into micro-batches."""
        lengths = [len(ids) for ids in self.tok(texts, pairs, add_special_tokens=True, verbose=False)["input_ids"]]
        return lengths, length_groups(lengths, size)


class EachModel:
    """A Ray Data actor that holds every model of a job, as a `scorer` each, and scores each
    batch with each of them: a job pays one actor start (process, imports) per pass, however
    many models it compares, and reads and batches its inputs once."""

    def __init__(self, scorer: type[_ModelActor], models: dict[str, str], **kwargs):
        self.scorers = [scorer(name, ref, **kwargs) for name, ref in models.items()]

    def __call__(self, batch: dict) -> pa.Table:
        return pa.concat_tables([scorer(batch) for scorer in self.scorers], promote_options="default")


class MaskScorer(_ModelActor):
    """Top-k fills and word-set metrics for prompts with one or more [MASK]."""

    def __init__(self, name: str, ref: str, use_gpu: bool, top_k: int, word_sets: dict[str, list[str]],
                 substitution_prompts: int, micro_batch: int = 64):
        super().__init__(name, ref, use_gpu)
        self.top_k, self.micro, self.subst = top_k, micro_batch, substitution_prompts
        self.head = mask_head(self.model)
        vocab = self.tok.get_vocab()
        self.word_ids = {k: sorted({vocab[w] for w in ws if w in vocab}) for k, ws in word_sets.items()}
        self.sia = analyzer()

    @_inference
    def probabilities(self, texts: list[str]) -> list[torch.Tensor]:
        """Per text, a (masks x vocab) tensor of probabilities."""
        enc = self.tok(texts, padding=True, return_tensors="pt").to(self.device)
        ids = enc["input_ids"]
        rows, cols = (ids == self.tok.mask_token_id).nonzero(as_tuple=True)
        if self.head is not None:
            hidden = self.model.base_model(input_ids=ids, attention_mask=enc["attention_mask"]).last_hidden_state
            logits = self.head(hidden[rows, cols])
        else:
            logits = self.model(**enc).logits[rows, cols]
        probs = logits.float().softmax(-1).cpu()
        return [probs[rows.cpu() == i] for i in range(len(texts))]

    def __call__(self, batch: dict) -> pa.Table:
        prompts, index = list(batch["prompt"]), batch["prompt_index"]
        out = {"predictions": [], "masks": [], "prompts": []}
        texts = [p.replace("[MASK]", self.tok.mask_token) for p in prompts]
        lengths, groups = self.micro_batches(texts, self.micro)
        for group in groups:
            valid = []
            for i in group:
                error = self._check(prompts[i], lengths[i])
                if error:
                    out["prompts"].append({"model": self.name, "prompt_index": int(index[i]), "prompt": prompts[i],
                                           "n_masks": prompts[i].count("[MASK]"), "error": error})
                else:
                    valid.append(i)
            if valid:
                for i, probs in zip(valid, self.probabilities([texts[i] for i in valid])):
                    self._emit(out, prompts[i], int(index[i]), probs)
        tables = [pa.Table.from_pylist(rows, schema=schema).append_column(
                      "_route", pa.array([route] * len(rows), pa.string()))
                  for route, schema in (("predictions", PREDICTIONS), ("masks", MASKS), ("prompts", PROMPTS))
                  for rows in [out[route]]]
        return pa.concat_tables(tables, promote_options="default")

    def _check(self, prompt: str, n_tokens: int) -> str | None:
        if not prompt.strip():
            return "empty prompt"
        if "[MASK]" not in prompt:
            return "no [MASK] in prompt"
        if n_tokens > self.max_len:
            return f"prompt has {n_tokens} tokens, more than the model's limit of {self.max_len}"
        return None

    def _emit(self, out: dict, prompt: str, index: int, probs: torch.Tensor) -> None:
        values, ids = probs.topk(self.top_k, dim=-1)
        filled = prompt
        for m in range(probs.shape[0]):
            tokens = [self.tok.decode([int(t)]) for t in ids[m]]
            filled = filled.replace("[MASK]", tokens[0], 1)
            for r, (tok, tid, p) in enumerate(zip(tokens, ids[m].tolist(), values[m].tolist()), start=1):
                out["predictions"].append({"model": self.name, "prompt": prompt, "prompt_index": index,
                                           "mask_index": m, "rank": r, "token": tok, "token_id": tid,
                                           "probability": p})
            out["masks"].append(self._mask_metrics(index, m, probs[m], set(ids[m].tolist())))
        out["prompts"].append({"model": self.name, "prompt_index": index, "prompt": prompt,
                               "n_masks": probs.shape[0], "filled": filled,
                               "filled_vader": self.sia.polarity_scores(filled)["compound"]})

    def _mask_metrics(self, index: int, m: int, p: torch.Tensor, top: set) -> dict:
        row = {"model": self.name, "prompt_index": index, "mask_index": m}
        for key in ("wanted", "unwanted"):
            ids = self.word_ids[key]
            row[f"{key}_share"] = len(top & set(ids)) / self.top_k
            row[f"{key}_mass"] = float(sum(float(p[i]) for i in ids if i in top))
        wanted = self.word_ids["wanted"]
        row["first_wanted_rank"] = int((p > p[wanted].max()).sum()) + 1 if wanted else None
        if index < self.subst:
            v, i = p.topk(SUBSTITUTION_TOP)
            row["top_ids"], row["top_probs"] = i.tolist(), v.tolist()
        return row


def mask_words(text: str, key: str, fraction: float, tok, seed: int) -> tuple[list[int], list[int]]:
    """Token ids with a seeded `fraction` of whole words masked, and the labels (-100 elsewhere).

    Words are the tokenizer's (`word_ids()`: BERT's split on whitespace and punctuation), as
    in training.
    """
    enc = tok(text, truncation=True, max_length=512)
    ids, word_of = list(enc["input_ids"]), enc.word_ids()
    words: dict[int, list[int]] = {}
    for i, w in enumerate(word_of):
        if w is not None:
            words.setdefault(w, []).append(i)
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "big"))
    n = max(1, round(fraction * len(words))) if words else 0
    chosen = rng.choice(sorted(words), size=n, replace=False) if n else []
    labels = [-100] * len(ids)
    for w in chosen:
        for i in words[w]:
            labels[i], ids[i] = ids[i], tok.mask_token_id
    return ids, labels


class CorpusScorer(_ModelActor):
    """Masked-token accuracy@1/@10 and pseudo-perplexity on held-out reviews."""

    def __init__(self, name: str, ref: str, use_gpu: bool, fraction: float = 0.15, seed: int = 0,
                 micro_batch: int = 16):
        super().__init__(name, ref, use_gpu)
        self.fraction, self.seed, self.micro = fraction, seed, micro_batch

    @_inference
    def __call__(self, batch: dict) -> pa.Table:
        import torch

        rows = []
        texts, ids_ = list(batch["text"]), list(batch["id"])
        masked = [mask_words(t, k, self.fraction, self.tok, self.seed) for t, k in zip(texts, ids_)]
        order = np.argsort([len(m[0]) for m in masked], kind="stable")
        for start in range(0, len(order), self.micro):
            group = order[start:start + self.micro]
            width = max(len(masked[i][0]) for i in group)
            pad = self.tok.pad_token_id
            ids = torch.tensor([masked[i][0] + [pad] * (width - len(masked[i][0])) for i in group],
                               device=self.device)
            labels = torch.tensor([masked[i][1] + [-100] * (width - len(masked[i][1])) for i in group],
                                  device=self.device)
            logits = self.model(input_ids=ids, attention_mask=(ids != pad).long()).logits.float()
            logp = logits.log_softmax(-1)
            top10 = logits.topk(10, dim=-1).indices
            for row, i in enumerate(group):
                sel = labels[row] != -100
                gold = labels[row][sel]
                rows.append({"model": self.name, "id": str(ids_[i]), "n_masked": int(sel.sum()),
                             "correct_at_1": int((top10[row][sel][:, 0] == gold).sum()),
                             "correct_at_10": int((top10[row][sel] == gold[:, None]).any(-1).sum()),
                             "nll_sum": float(-logp[row][sel].gather(-1, gold[:, None]).sum())})
        table = pa.Table.from_pylist(rows, schema=CORPUS).append_column("_route", pa.array(["corpus"] * len(rows)))
        return with_keys(table, batch, order)


def with_keys(table: pa.Table, batch: dict, order=None) -> pa.Table:
    """`table` (a row per row of `batch`, in `order`) with the rows' `source`, `_row` and `_end`,
    which name them for the write's ledger (reviewlm.io.ledger) and are not written; `table` as
    it is for a batch without them."""
    if "_row" not in batch:
        return table
    order = np.arange(table.num_rows) if order is None else order
    table = table.append_column("source", pa.array(np.asarray(batch["source"])[order].tolist(), pa.string()))
    for key in ("_row", "_end"):
        table = table.append_column(key, pa.array(np.asarray(batch[key])[order], pa.int64()))
    return table


def class_names(config, task: str = "classify") -> list[str]:
    """A classifier's classes in id order: its `id2label`, or for stars the five ratings
    (class k is k+1 stars, whatever the model calls it)."""
    if task != "stars":
        return [str(config.id2label[i]) for i in range(config.num_labels)]
    if config.num_labels != len(STARS):
        raise UsageError(f"the stars task needs a model with 5 classes (1-5 stars), not {config.num_labels}")
    return list(STARS)


class ClassifyScorer(_ModelActor):
    """Per text (or text pair): the predicted class, its probability and every class's.

    Class names are `class_names(config, task)`. With a label column (`label`, or `rating`
    for stars), each row also gets the true label and its negative log-likelihood.
    """

    def __init__(self, name: str, ref: str, use_gpu: bool, task: str = "classify", micro_batch: int | None = None):
        super().__init__(name, ref, use_gpu, task="classify")
        self.labels = class_names(self.model.config, task)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.label_column = "rating" if task == "stars" else "label"
        self.micro = micro_batch or (GPU_MICRO_BATCH if self.device.type == "cuda" else CPU_MICRO_BATCH)

    def probabilities(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        """Softmax over the classes per text (or pair): tokenized once, cut to `max_len`, then
        sorted by length and padded per micro-batch."""
        enc = self.tok(texts, pairs, truncation="longest_first", max_length=self.max_len)
        probs = np.zeros((len(texts), len(self.labels)))
        for group in length_groups([len(ids) for ids in enc["input_ids"]], self.micro):
            batch = self.tok.pad({k: [enc[k][i] for i in group] for k in enc.keys()}, return_tensors="pt")
            probs[group] = self.model(**batch.to(self.device)).logits.float().softmax(-1).cpu().numpy()
        return probs

    @_inference
    def __call__(self, batch: dict) -> pa.Table:
        texts = list(batch["text"])
        probs = self.probabilities(texts, list(batch["text_pair"]) if "text_pair" in batch else None)
        given = batch.get(self.label_column, [None] * len(texts))
        truth = [None if v is None or v != v else str(int(v) if isinstance(v, (float, np.floating)) else v)
                 for v in given]
        known = np.array([self.index.get(v, -1) for v in truth])
        rows = np.arange(len(texts))
        nll = np.where(known >= 0, -np.log(np.maximum(probs[rows, np.maximum(known, 0)], 1e-300)), np.nan)
        best = probs.argmax(-1)
        table = pa.table({
            "model": [self.name] * len(texts), "id": [str(i) for i in batch["id"]], "label": truth,
            "predicted": [self.labels[k] for k in best], "probability": probs[rows, best],
            "probabilities": [list(zip(self.labels, p.tolist())) for p in probs],
            "nll": pa.array(nll, pa.float64(), mask=np.isnan(nll))}, schema=LABELS)
        return with_keys(table.append_column("_route", pa.array(["labels"] * len(texts))), batch)
