"""report.md (with PNGs beside it) and report.html (self-contained: images embedded)."""

from __future__ import annotations

import base64
import html

import pandas as pd

from reviewlm.models import DEFAULT_MODEL
from reviewlm.report import plots
from reviewlm.results import FilterStats, ScoreResult, TrainResult

MAX_PROMPT_FIGURES = 10  # prompts drawn as top-k bars
MAX_PROMPT_ROWS = 200  # further prompts listed with their top 3; the rest only in predictions/
NOTES = {"starter": "offline starter: all-MiniLM-L6-v2 weights converted to DistilBERT with a newly "
                    f"trained MLM head, not {DEFAULT_MODEL}",
         "tiny": "random 2-layer DistilBERT for tests: its predictions mean nothing"}


def _table(header: list[str], rows: list[list]) -> tuple[str, str]:
    md = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return "\n".join(md), f"<table><tr>{th}</tr>{trs}</table>"


def _fmt(v, digits=3):
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else v


def finding(summary: ScoreResult, trained: dict[str, TrainResult], top_k: int) -> str | None:
    """The report's opening paragraph: which model fills the prompts with wanted words most, by
    how much against the others, and the perplexity and training rows of each tuned model."""
    scored = {name: m.prompts for name, m in summary.models.items() if m.prompts}
    if not scored:
        return None
    best = max(scored, key=lambda n: (scored[n].wanted_share, -scored[n].unwanted_share))
    top = scored[best]
    text = (f"{best} fills the prompts with wanted words most: {top.wanted_share:.0%} of its top "
            f"{top_k} fills are wanted words, {top.unwanted_share:.0%} unwanted")
    others = [f"{n} {p.wanted_share:.0%} ({(top.wanted_share - p.wanted_share) * 100:+.0f} points), "
              f"{p.unwanted_share:.0%} unwanted" for n, p in scored.items() if n != best]
    text += f", against {'; '.join(others)}." if others else "."
    tuned = [f"{n} {t.best.perplexity:,.2f} (from {t.before.perplexity:,.0f}; tuned on {t.rows['train']:,} "
             "reviews)" for n, t in trained.items() if t.task == "mlm" and "train" in t.rows]
    if tuned:
        text += f" Perplexity on each model's own held-out split: {'; '.join(tuned)}."
    return text


def write_report(out, summary: ScoreResult, predictions: pd.DataFrame, prompts: pd.DataFrame, *,
                 top_k: int, trained: dict[str, TrainResult], funnel: FilterStats | None = None) -> None:
    """Write PNGs, report.md and report.html into the output's temporary location.

    `prompts` are the scored prompts to show (`prompt_index`, `prompt`, by index) and
    `predictions` theirs: a sample; the counts come from `summary` (of the `top_k` fills kept
    per mask). `trained` are the train
    results of the tuned models (their loss curves), `funnel` a filter job's stats."""
    md, body, images = ["# reviewlm score report"], ["<h1>reviewlm score report</h1>"], {}

    def section(title: str):
        md.append(f"\n## {title}\n")
        body.append(f"<h2>{html.escape(title)}</h2>")

    def table(header, rows):
        m, h = _table(header, rows)
        md.append(m)
        body.append(h)

    def note(text: str):
        md.append(f"\n{text}\n")
        body.append(f"<p>{html.escape(text)}</p>")

    def image(name: str, png: bytes, alt: str):
        images[name] = png
        md.append(f"\n![{alt}]({name})\n")
        body.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,'
                    f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(alt)}</figcaption></figure>')

    opening = finding(summary, trained, top_k)
    if opening:
        note(opening)
    models = summary.models
    section("Models")
    table(["name", "model", "note"], [[n, m.ref, NOTES.get(m.ref, "")] for n, m in models.items()])
    scored = [n for n, m in models.items() if m.prompts]
    if scored:
        section("Wanted and unwanted words")
        table(["model", "wanted share", "unwanted share", "wanted mass", "unwanted mass",
               "median rank of first wanted", "mean VADER of filled prompts"],
              [[n, *(_fmt(getattr(models[n].prompts, k)) for k in (
                  "wanted_share", "unwanted_share", "wanted_mass", "unwanted_mass", "median_first_wanted_rank",
                  "mean_filled_vader"))] for n in scored])
        image("summary.png", plots.summary_bars(summary), "Wanted/unwanted share and mass per model")
    corpus = [n for n, m in models.items() if m.corpus]
    if corpus:
        section("Held-out corpus (15% of words masked)")
        table(["model", "reviews", "masked tokens", "accuracy@1", "accuracy@10", "pseudo-perplexity"],
              [[n, *(_fmt(getattr(models[n].corpus, k)) for k in (
                  "reviews", "masked_tokens", "accuracy_at_1", "accuracy_at_10", "pseudo_perplexity"))]
               for n in corpus])
    classified = [n for n, m in models.items() if m.labels]
    if classified:
        title = "Star ratings" if summary.task == "stars" else "Classes"
        section(title)
        keys = ["accuracy", "macro_f1", "majority_baseline"] + (
            ["binary_accuracy", "within_one_accuracy"] if summary.task == "stars" else [])
        table(["model", "rows", *(k.replace("_", " ") for k in keys)],
              [[n, models[n].labels.rows, *(_fmt(getattr(models[n].labels.metrics, k, None)) for k in keys)]
               for n in classified])
        for n in classified:
            m = models[n].labels.metrics
            if m is not None:
                png = plots.confusion(m.confusion_matrix, list(m.labels), f"{n}: {title.lower()}")
                image(f"confusion_{n}.png", png, f"Confusion matrix of {n}")
    if len(predictions):
        section("Top predictions per prompt")
        shown = prompts.head(MAX_PROMPT_FIGURES + MAX_PROMPT_ROWS)
        preds = predictions[predictions["prompt_index"].isin(shown["prompt_index"])]
        by_prompt = {i: g for i, g in preds.groupby("prompt_index", sort=False)}
        rows = []
        for i, row in enumerate(shown.itertuples()):
            p = by_prompt.get(row.prompt_index, preds.iloc[:0])
            if i < MAX_PROMPT_FIGURES:
                image(f"topk_{row.prompt_index}.png", plots.topk_bars(row.prompt, p, scored, summary.word_sets),
                      f"Top fills for: {row.prompt}")
            else:
                first = p[(p["mask_index"] == 0) & (p["rank"] <= 3)].sort_values(["model", "rank"])
                rows += [[row.prompt, m, ", ".join(g["token"])] for m, g in first.groupby("model", sort=False)]
        if rows:
            table(["prompt", "model", "top 3"], rows)
        scored_prompts = max(models[n].prompts.prompts_scored for n in scored)
        if scored_prompts > len(shown):
            note(f"{scored_prompts - len(shown):,} more prompts: every prediction is in predictions/.")
    for pair, entries in summary.substitutions.items():
        section(f"Substitutions: {pair}")
        texts = dict(zip(prompts["prompt_index"], prompts["prompt"])) if len(prompts) else {}
        for entry in entries[:MAX_PROMPT_FIGURES]:
            prompt = texts.get(entry["prompt_index"], "")
            image(f"substitutions_{pair.replace(' ', '_')}_{entry['prompt_index']}_{entry['mask_index']}.png",
                  plots.substitution_bars(f"{pair}: {prompt}", entry), f"Largest probability changes for: {prompt}")
    if summary.invalid_prompts:
        section("Prompts that could not be scored")
        table(["#", "prompt", "reason"],
              [[p["prompt_index"], p["prompt"], p["error"]] for p in summary.invalid_prompts])
    if trained:
        section("Training")
        for n, t in trained.items():
            image(f"loss_{n}.png", plots.loss_curve(t), f"Loss and {'perplexity' if t.task == 'mlm' else 'accuracy'} "
                  f"per epoch of {n}")
    if funnel:
        section("Filter funnel")
        image("funnel.png", plots.funnel(funnel), "Rows seen and passed per filter")

    for name, png in images.items():
        with out.fs.open(f"{out.tmp}/{name}", "wb") as fh:
            fh.write(png)
    with out.fs.open(f"{out.tmp}/report.md", "w") as fh:
        fh.write("\n".join(md) + "\n")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
             "img{max-width:100%}figure{margin:1em 0}")
    with out.fs.open(f"{out.tmp}/report.html", "w") as fh:
        fh.write(f"<!doctype html><html><head><meta charset='utf-8'><title>reviewlm score report</title>"
                 f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
