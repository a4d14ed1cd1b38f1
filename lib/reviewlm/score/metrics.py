"""Summary metrics from the per-task sums of the score job's writes, and substitutions from
the few prompts they are computed on."""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from reviewlm.io.sink import value_counts
from reviewlm.metrics import classification_metrics, confusion_matrix, perplexity, star_metrics
from reviewlm.results import CorpusScores, LabelScores, PromptScores
from reviewlm.tally import as_float, exact_sum

SEP = "\x00"  # in a sum's key: model, what, and a value (names of models hold none)
SHARES = ("wanted_share", "unwanted_share", "wanted_mass", "unwanted_mass")


def _key(*parts) -> str:
    return SEP.join(map(str, parts))


def summary_sums(block: pa.Table) -> Counter:
    """What one scored block adds to the summary, per model: counts, and exact sums
    (`exact_sum`) of the figures averaged. Each write task adds up its blocks' and its ledger
    records them, so a resumed run's summary counts what the interrupted one wrote too."""
    out: Counter = Counter()
    route = block["_route"]
    for name in ("masks", "prompts", "corpus", "labels"):
        part = block.filter(pc.equal(route, name))
        for model in set(part["model"].to_pylist()) if part.num_rows else ():
            rows = part.filter(pc.equal(part["model"], model))
            SUMS[name](rows, model, out)
    return out


def _masks_sums(rows: pa.Table, model: str, out: Counter) -> None:
    out[_key(model, "masks")] += rows.num_rows
    for name in SHARES:
        out[_key(model, name)] += exact_sum(rows[name].to_numpy(zero_copy_only=False))
    for rank, n in value_counts(rows["first_wanted_rank"]).items():
        out[_key(model, "rank", rank)] += n


def _prompts_sums(rows: pa.Table, model: str, out: Counter) -> None:
    valid = rows.filter(pc.is_null(rows["error"]))
    out[_key(model, "prompts")] += valid.num_rows
    vader = valid["filled_vader"].drop_null().to_numpy(zero_copy_only=False)
    out[_key(model, "vader")] += exact_sum(vader)
    out[_key(model, "vader_n")] += len(vader)


def _corpus_sums(rows: pa.Table, model: str, out: Counter) -> None:
    out[_key(model, "reviews")] += rows.num_rows
    for name in ("n_masked", "correct_at_1", "correct_at_10"):
        out[_key(model, name)] += pc.sum(rows[name]).as_py() or 0
    out[_key(model, "nll_sum")] += exact_sum(rows["nll_sum"].to_numpy(zero_copy_only=False))


def _labels_sums(rows: pa.Table, model: str, out: Counter) -> None:
    out[_key(model, "rows")] += rows.num_rows
    for label, n in value_counts(rows["predicted"]).items():
        out[_key(model, "predicted", label)] += n
    labelled = rows.filter(pc.is_valid(rows["label"]))
    out[_key(model, "labelled")] += labelled.num_rows
    for (label, predicted), n in Counter(zip(labelled["label"].to_pylist(), labelled["predicted"].to_pylist())).items():
        out[_key(model, "cell", label, predicted)] += n
    nll = rows["nll"].drop_null().to_numpy(zero_copy_only=False)
    out[_key(model, "nll")] += exact_sum(nll)
    out[_key(model, "nll_n")] += len(nll)


SUMS = {"masks": _masks_sums, "prompts": _prompts_sums, "corpus": _corpus_sums, "labels": _labels_sums}


def _mean(sums: Counter, total: str, n: str) -> float:
    """A mean from exact sums: the bits `math.fsum(values) / len(values)` gives."""
    return as_float(sums[total]) / sums[n] if sums[n] else math.nan


def _of(sums: Counter, model: str) -> Counter:
    """One model's sums, keyed by what they are."""
    prefix = model + SEP
    return Counter({k[len(prefix):]: v for k, v in sums.items() if k.startswith(prefix)})


def prompt_summary(sums: Counter, models: list[str]) -> dict[str, PromptScores]:
    """Per model: mean wanted/unwanted share and mass in the top k, median first wanted rank, VADER."""
    out = {}
    for model in models:
        m = _of(sums, model)
        if not m["masks"]:
            continue
        ranks = sorted((int(k.split(SEP)[1]), n) for k, n in m.items() if k.startswith("rank" + SEP))
        out[model] = PromptScores(
            prompts_scored=m["prompts"], masks_scored=m["masks"],
            **{name: _mean(m, name, "masks") for name in SHARES},
            median_first_wanted_rank=_median(ranks), mean_filled_vader=_mean(m, "vader", "vader_n"))
    return out


def _median(counts: list[tuple[int, int]]) -> float:
    """The median of values given as sorted (value, count) pairs, as pandas computes it."""
    n = sum(c for _, c in counts)

    def at(i: int) -> int:
        for value, c in counts:
            if i < c:
                return value
            i -= c

    return (at((n - 1) // 2) + at(n // 2)) / 2 if n else math.nan


def corpus_summary(sums: Counter, models: list[str]) -> dict[str, CorpusScores]:
    out = {}
    for model in models:
        m = _of(sums, model)
        if not m["reviews"]:
            continue
        n = m["n_masked"]
        out[model] = CorpusScores(reviews=m["reviews"], masked_tokens=n,
                                  accuracy_at_1=m["correct_at_1"] / max(n, 1),
                                  accuracy_at_10=m["correct_at_10"] / max(n, 1),
                                  pseudo_perplexity=perplexity(as_float(m["nll_sum"]) / max(n, 1)))
    return out


def labels_summary(sums: Counter, labels: dict[str, list[str]], stars: bool) -> dict[str, LabelScores]:
    """Per model: predicted class counts and, over the rows with a known label, the metrics
    (`star_metrics` for stars); `labels` holds each model's classes in id order."""
    out = {}
    for model, names in labels.items():
        m = _of(sums, model)
        if not m["rows"]:
            continue
        index = {label: i for i, label in enumerate(names)}
        cells = [(k.split(SEP)[1:], n) for k, n in m.items() if k.startswith("cell" + SEP)]
        known = [((index[t], index[p]), n) for (t, p), n in cells if t in index]
        metrics = mean_nll = None
        if known:
            cm = confusion_matrix([t for (t, _), _ in known], [p for (_, p), _ in known], n=len(names),
                                  counts=[n for _, n in known])
            metrics = star_metrics(cm) if stars else classification_metrics(cm, names)
            mean_nll = _mean(m, "nll", "nll_n")
        out[model] = LabelScores(rows=m["rows"], labels=tuple(names),
                                 predicted_distribution={k: m[_key("predicted", k)] for k in names},
                                 unknown_labels=m["labelled"] - sum(n for _, n in known) if m["labelled"] else None,
                                 metrics=metrics, mean_nll=mean_nll)
    return out


def substitutions(masks: pd.DataFrame, base: str, other: str, decode, n: int = 10) -> list[dict]:
    """Per prompt: the tokens among both models' top 1000 whose probability rose/fell most."""
    out = []
    a = masks[(masks["model"] == base) & masks["top_ids"].notna()].set_index(["prompt_index", "mask_index"])
    b = masks[(masks["model"] == other) & masks["top_ids"].notna()].set_index(["prompt_index", "mask_index"])
    for key in sorted(set(a.index) & set(b.index)):
        pa_ = dict(zip(a.loc[key, "top_ids"], a.loc[key, "top_probs"]))
        pb = dict(zip(b.loc[key, "top_ids"], b.loc[key, "top_probs"]))
        floor_a, floor_b = min(pa_.values()), min(pb.values())
        delta = {t: pb.get(t, floor_b) - pa_.get(t, floor_a) for t in set(pa_) | set(pb)}
        ranked = sorted(delta.items(), key=lambda kv: kv[1])
        out.append({"prompt_index": int(key[0]), "mask_index": int(key[1]),
                    "rose": [{"token": decode(t), "delta": float(d)} for t, d in ranked[::-1][:n] if d > 0],
                    "fell": [{"token": decode(t), "delta": float(d)} for t, d in ranked[:n] if d < 0]})
    return out
