"""`reviewlm <command>`: every job is also a function you can import.

Exit codes: 0 done; 2 bad usage or bad input (one line on stderr); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from contextlib import contextmanager

from reviewlm.errors import UsageError, usage_cause
from reviewlm.io.layout import CatalogColumns, Columns
from reviewlm.io.storage import FORMATS
from reviewlm.models import DEFAULT_MODEL
from reviewlm.options import (
    PROMPTS_PER_PIECE,
    RecommendArgs,
    RunOptions,
    ScoreArgs,
    TrainArgs,
    add_options,
    from_options,
)
from reviewlm.results import ClassMetrics, FilterStats, PipelineResult, RecommendResult, ScoreResult, TrainResult
from reviewlm.runtime import job_console


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _run_options(p: argparse.ArgumentParser, overwrite: bool = True) -> None:
    names = ("address", "num_cpus", "verbose", "split_mb", "delimiter", "encoding")
    names += ("overwrite", "resume") if overwrite else ()
    add_options(p, RunOptions, only=names)


def _columns(p: argparse.ArgumentParser, *names: str) -> None:
    add_options(p, Columns, only=names, suffix="-column")


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, help="--demo: reviews to synthesize (default 20000)")
    p.add_argument("--recipe", help="filter recipe (default: the reference selection)")
    _columns(p, "text")
    add_options(p, TrainArgs, only=("model", "epochs", "max_steps", "batch_size", "lr", "chunk_size",
                                    "num_workers", "use_gpu", "precision", "streaming"), keep_defaults=False)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reviewlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("filter", help="keep the reviews that matter (Ray Data)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs or s3:// URIs")
    p.add_argument("--output", required=True, help="output directory, local or s3://")
    _columns(p, "text", "id", "rating", "title", "brand", "product")
    p.add_argument("--format", choices=FORMATS, help="input format (default: from each file's extension)")
    p.add_argument("--recipe", help="YAML filter recipe (default: the reference selection)")
    p.add_argument("--mode", choices=["drop", "annotate"], default="drop",
                   help="drop: split kept/rejected; annotate: keep every row with its scores")
    p.add_argument("--num-actors", type=int, help="actors per classifier step (default: one per CPU, or GPU)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per classifier actor, fp16")
    _run_options(p)

    p = sub.add_parser("train", help="fine-tune DistilBERT on Ray Train (masked LM, any classes, 1-5 stars)")
    p.add_argument("--data", nargs="+", required=True, metavar="URI",
                   help="training rows: a filter job's kept/ or any review dump or labelled texts")
    p.add_argument("--output", required=True, help="output directory, local or s3://")
    _columns(p, "text", "text_pair", "label", "id", "rating")
    p.add_argument("--format", choices=FORMATS, help="input format (default: from each file's extension)")
    add_options(p, TrainArgs)
    _run_options(p)

    p = sub.add_parser("score", help="score [MASK] fills or classes of several models side by side (Ray Data)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=REF",
                   help="a model to score, repeatable: hub id, local or s3:// directory, starter, tiny")
    p.add_argument("--output", required=True, help="output directory, local or s3://")
    p.add_argument("--prompts", nargs="+", metavar="URI", help="files or directories (local or s3://) of prompts, "
                   "one per line, each with one or more [MASK]; read by Ray Data in runs of "
                   f"{PROMPTS_PER_PIECE:,} or more")
    p.add_argument("--templates", help="prompt templates over {brand} and {product} (text or YAML)")
    p.add_argument("--corpus", nargs="+", metavar="URI", help="held-out texts to mask and score, or to classify")
    _columns(p, "text", "text_pair", "label", "id", "rating")
    p.add_argument("--words", help="YAML with wanted: and unwanted: word lists")
    add_options(p, ScoreArgs)
    _run_options(p)

    p = sub.add_parser("synth", help="write a deterministic corpus of template reviews or relevance pairs")
    p.add_argument("--output", required=True, help="output directory, local or s3://")
    p.add_argument("--kind", choices=["reviews", "relevance", "catalog"], default="reviews",
                   help="reviews; (query, product_title, esci_label) pairs for --task classify; or a catalogue "
                        "(--rows products) with reviews, needs and judgments for recommend")
    p.add_argument("--rows", type=int, default=25_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    p.add_argument("--shards", type=int, default=1, help="number of files")
    p.add_argument("--min-words", type=int, default=0, help="pad reviews with filler to at least this")
    p.add_argument("--max-words", type=int, default=0)
    p.add_argument("--near-copies", type=float, default=0.0,
                   help="share of reviews that re-post an earlier one with one edit (a word, a tail, case, order)")
    add_options(p, RunOptions, only=("overwrite",))

    p = sub.add_parser("recommend", help="rank catalogue products for needs in plain words (Ray Data)")
    p.add_argument("--catalog", nargs="+", required=True, metavar="URI", help="product table(s), local or s3://")
    p.add_argument("--queries", required=True, metavar="URI", help="needs: a text file, one per line "
                                                                     "(or a table, with --query-column)")
    p.add_argument("--output", required=True, help="output directory, local or s3://")
    add_options(p, CatalogColumns, suffix="-column")
    p.add_argument("--reviews", nargs="+", metavar="URI", help="reviews to join on the product: count, mean rating "
                                                               "and mean VADER sentiment per product")
    p.add_argument("--review-product-column", default="product_id",
                   help="reviews: the column naming the product (default: product_id)")
    p.add_argument("--review-text-column", default="text", help="reviews: the text column (default: text)")
    p.add_argument("--review-rating-column", default="rating", help="reviews: the 1-5 star column (default: rating)")
    add_options(p, RecommendArgs)
    add_options(p, RunOptions, only=("address", "num_cpus", "verbose", "split_mb", "delimiter", "encoding",
                                     "overwrite"))

    p = sub.add_parser("pipeline", help="filter -> fine-tune v1 (all) and v2 (kept) -> score -> report")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="review dump (not with --demo)")
    p.add_argument("--output", required=True, help="output directory, local or s3://")
    p.add_argument("--demo", action="store_true",
                   help="offline demo settings: synthesized corpus, starter model, small budget")
    _pipeline_options(p)
    _run_options(p)

    p = sub.add_parser("demo", help="the pipeline end to end, offline, on a synthesized corpus")
    p.add_argument("--output", default="out/demo", help="output directory (replaced)")
    _pipeline_options(p)
    _run_options(p, overwrite=False)
    return parser


def _columns_of(args) -> Columns:
    return from_options(Columns, argparse.Namespace(**{k.removesuffix("_column"): v for k, v in vars(args).items()
                                                     if k.endswith("_column")}))


CONTENT_FILES = ("recipe", "words", "templates")  # files whose content, not only name, is an argument


def _run(args, **given) -> RunOptions:
    """The run options given, and every argument for the output's manifest, with the content
    hash of the recipe, word-list and template files (so `--resume` notices an edited one)."""
    digests = {f"{name}_sha256": _digest(path) for name in CONTENT_FILES if (path := getattr(args, name, None))}
    return from_options(RunOptions, args, arguments=vars(args) | digests, **given)


def _digest(uri: str) -> str | None:
    """The SHA-256 of a file's bytes; None when it cannot be read (the job then says why)."""
    import hashlib

    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except (OSError, ValueError):
        return None


def run_filter(args) -> FilterStats:
    from reviewlm.filters.recipe import load_recipe
    from reviewlm.filters.stage import filter_reviews

    stats = filter_reviews(args.inputs, args.output, recipe=load_recipe(args.recipe), columns=_columns_of(args),
                           fmt=args.format, mode=args.mode, run=_run(args), use_gpu=args.use_gpu,
                           num_actors=args.num_actors)
    print(format_funnel(stats))
    print(f"wrote {args.output}")
    return stats


def format_funnel(stats) -> str:
    lines = [f"rows read {stats.rows_read}: kept {stats.kept}, rejected {stats.rejected}, "
             f"quarantined {stats.quarantined}"]
    for f in stats.filters:
        lines.append(f"  {f.name:<24} seen {f.seen:>9}  passed {f.passed:>9}  dropped {f.dropped:>9}")
    return "\n".join(lines)


def run_train(args) -> TrainResult:
    from reviewlm.train.job import train_model

    result = train_model(args.data, args.output, from_options(TrainArgs, args), columns=_columns_of(args),
                         fmt=args.format, run=_run(args))
    print(format_training(result))
    print(f"wrote {args.output}")
    return result


def format_training(result: TrainResult) -> str:
    """Before and after (the best epoch, which model/ holds), and the test split of a classifier."""
    best = result.best
    if result.task == "mlm":
        what = f"perplexity {result.before.perplexity:.2f} before, {best.perplexity:.2f}"
    else:
        what = f"eval loss {result.before.eval_loss:.3f} before, {best.eval_loss:.3f}"
    lines = [f"{result.task} on {result.model}: {what} after epoch {best.epoch} of "
             f"{result.epochs[-1].epoch} (model/ holds the best epoch)"]
    if result.test:
        lines.append(f"test: {format_classes(result.test)}")
    return "\n".join(lines)


def format_classes(m: ClassMetrics) -> str:
    """Accuracy, macro-F1 (and, for stars, binary and within-one) against the majority baseline."""
    stars = f", binary {m.binary_accuracy:.3f}, within one {m.within_one_accuracy:.3f}" if m.stars else ""
    return (f"accuracy {m.accuracy:.3f}, macro-F1 {m.macro_f1:.3f}{stars} on {m.n} rows "
            f"(majority baseline {m.majority_baseline:.3f})")


def run_score(args) -> ScoreResult:
    from reviewlm.score.job import parse_models, score_models
    from reviewlm.score.prompts import gather_prompts, load_word_sets

    result = score_models(
        parse_models(args.model), args.output, prompts=gather_prompts(args.prompts, args.templates, bool(args.corpus)),
        corpus=args.corpus, columns=_columns_of(args), word_sets=load_word_sets(args.words),
        args=from_options(ScoreArgs, args), run=_run(args))
    print(format_scores(result))
    print(f"report: {args.output.rstrip('/')}/report.html")
    return result


def format_scores(result: ScoreResult) -> str:
    lines = []
    for name, m in result.models.items():
        parts = [f"{name:<10}"]
        if m.prompts:
            p = m.prompts
            parts.append(f"wanted {p.wanted_share:.2f} (mass {p.wanted_mass:.3f})  "
                         f"unwanted {p.unwanted_share:.2f} (mass {p.unwanted_mass:.3f})")
        if m.corpus:
            parts.append(f"acc@1 {m.corpus.accuracy_at_1:.3f}  pppl {m.corpus.pseudo_perplexity:.1f}")
        if m.labels:
            parts.append(format_classes(m.labels.metrics) if m.labels.metrics else f"{m.labels.rows} rows, no labels")
        lines.append("  ".join(parts))
    if result.invalid_prompts:
        lines.append(f"{len(result.invalid_prompts)} prompt(s) could not be scored: see summary.json")
    return "\n".join(lines)


def run_recommend(args) -> RecommendResult:
    from reviewlm.recommend.job import recommend

    catalog = CatalogColumns(**{f: getattr(args, f"{f}_column") for f in CatalogColumns.__dataclass_fields__})
    result = recommend(args.catalog, args.queries, args.output, from_options(RecommendArgs, args), columns=catalog,
                       reviews=args.reviews, review_columns=(args.review_product_column, args.review_text_column,
                                                             args.review_rating_column), run=_run(args))
    print(format_recommendations(result))
    print(f"report: {args.output.rstrip('/')}/report.html")
    return result


def format_recommendations(result: RecommendResult) -> str:
    """What was ranked and, with judgments, the metrics."""
    lines = [f"ranked {result.ranked_rows:,} products for {result.queries:,} needs from {result.products:,} "
             f"({result.quarantined:,} catalogue rows quarantined, {len(result.empty_queries)} empty needs skipped)"]
    m = result.metrics
    if m:
        figures = "  ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith(("ndcg", "mrr", "recall"))
                            and v is not None)
        lines.append(f"{figures}  over {m['queries_judged']} judged needs")
    return "\n".join(lines)


def run_synth(args) -> dict:
    from reviewlm.synth import write_synth

    manifest = write_synth(args.output, args.rows, args.seed, args.format, args.shards,
                           args.min_words, args.max_words, kind=args.kind, near_copies=args.near_copies,
                           run=_run(args))
    what = {"reviews": "reviews", "relevance": "query-product pairs", "catalog": "products"}[args.kind]
    print(f"wrote {args.rows} {what} to {args.output}")
    return manifest


def run_pipeline(args) -> PipelineResult:
    from dataclasses import replace

    from reviewlm.pipeline import DEMO_ROWS, DEMO_TRAIN, PipelineArgs
    from reviewlm.pipeline import run_pipeline as run

    demo = args.command == "demo" or args.demo
    if demo and getattr(args, "inputs", None):
        raise UsageError("--demo synthesizes its own corpus: give no INPUT")
    given = {k: v for k, v in vars(args).items() if k in TrainArgs.__dataclass_fields__}  # the flags given
    train = replace(DEMO_TRAIN if demo else TrainArgs(), **given)
    pargs = PipelineArgs(inputs=getattr(args, "inputs", []), recipe=args.recipe,
                         columns=Columns(text=args.text_column), train=train)
    result = run(args.output, pargs, synth_rows=(args.rows or DEMO_ROWS) if demo else None,
                 run=_run(args, overwrite=demo or args.overwrite))
    note = f" (offline starter, not {DEFAULT_MODEL})" if train.model == "starter" else ""
    print(f"\nmodel: {train.model_name}{note}")
    print(f"{'':6}{'wanted share':>14}{'unwanted share':>16}{'wanted mass':>13}{'unwanted mass':>15}")
    for name, m in result.score.models.items():
        p = m.prompts
        print(f"{name:6}{p.wanted_share:>14.2f}{p.unwanted_share:>16.2f}{p.wanted_mass:>13.3f}{p.unwanted_mass:>15.3f}")
    print(f"report: {os.path.abspath(result.report) if '://' not in result.report else result.report}")
    return result


COMMANDS = {"filter": run_filter, "train": run_train, "score": run_score, "recommend": run_recommend,
            "pipeline": run_pipeline, "demo": run_pipeline, "synth": run_synth}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with job_console(getattr(args, "verbose", False)), _own_ray():
            COMMANDS[args.command](args)
        return 0
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("reviewlm: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        cause = usage_cause(exc)
        if cause is not None:
            print(f"reviewlm: error: {cause.for_cli()}", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1


@contextmanager
def _own_ray():
    """Leave a Ray this command started (so the process can exit); a Ray it found running (a
    test's, a notebook's) stays up."""
    ray = sys.modules.get("ray")
    found = ray is not None and ray.is_initialized()
    try:
        yield
    finally:
        ray = sys.modules.get("ray")
        if not found and ray is not None and ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
