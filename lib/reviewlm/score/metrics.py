"""Summary metrics from the score job's outputs (pandas over the written Parquet)."""

from __future__ import annotations

import math

import pandas as pd

from reviewlm.metrics import classification_metrics, confusion_matrix, perplexity, star_metrics
from reviewlm.results import CorpusScores, LabelScores, PromptScores


def _mean(values: pd.Series) -> float:
    """The exactly rounded mean (math.fsum): the same whatever order the rows were written in."""
    values = values.dropna()
    return math.fsum(values) / len(values) if len(values) else math.nan


def prompt_summary(masks: pd.DataFrame, prompts: pd.DataFrame) -> dict[str, PromptScores]:
    """Per model: mean wanted/unwanted share and mass in the top k, first wanted rank, VADER."""
    out = {}
    for model, m in masks.groupby("model"):
        p = prompts[(prompts["model"] == model) & prompts["error"].isna()]
        out[model] = PromptScores(
            prompts_scored=int(len(p)), masks_scored=int(len(m)),
            **{name: _mean(m[name]) for name in ("wanted_share", "unwanted_share", "wanted_mass", "unwanted_mass")},
            median_first_wanted_rank=float(m["first_wanted_rank"].median()),
            mean_filled_vader=_mean(p["filled_vader"]))
    return out


def corpus_summary(corpus: pd.DataFrame) -> dict[str, CorpusScores]:
    out = {}
    for model, c in corpus.groupby("model"):
        n = int(c["n_masked"].sum())
        out[model] = CorpusScores(reviews=int(len(c)), masked_tokens=n,
                                  accuracy_at_1=float(c["correct_at_1"].sum() / max(n, 1)),
                                  accuracy_at_10=float(c["correct_at_10"].sum() / max(n, 1)),
                                  pseudo_perplexity=perplexity(c["nll_sum"].sum() / max(n, 1)))
    return out


def labels_summary(scored: pd.DataFrame, labels: dict[str, list[str]], stars: bool) -> dict[str, LabelScores]:
    """Per model: predicted class counts and, over the rows with a known label, the metrics
    (`star_metrics` for stars); `labels` holds each model's classes in id order."""
    out = {}
    for model, r in scored.groupby("model"):
        names = labels[model]
        index = {label: i for i, label in enumerate(names)}
        labelled = r.dropna(subset=["label"])
        known = labelled[labelled["label"].isin(list(index))]
        metrics = mean_nll = None
        if len(known):
            cm = confusion_matrix(known["label"].map(index), known["predicted"].map(index), n=len(names))
            metrics = star_metrics(cm) if stars else classification_metrics(cm, names)
            mean_nll = float(known["nll"].mean())
        out[model] = LabelScores(rows=int(len(r)), labels=tuple(names),
                                 predicted_distribution={k: int((r["predicted"] == k).sum()) for k in names},
                                 unknown_labels=int(len(labelled) - len(known)) if len(labelled) else None,
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
