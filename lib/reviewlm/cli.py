"""`reviewlm <command>`: every job is also a function you can import.

Exit codes: 0 done; 2 bad usage or bad input (one line on stderr); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from reviewlm.errors import UsageError, usage_cause
from reviewlm.runtime import VERBOSE


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all cores)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log lines on the console too")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="output directory, local or s3://")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, help="--demo: reviews to synthesize (default 20000)")
    p.add_argument("--recipe", help="filter recipe (default: the reference selection)")
    p.add_argument("--text-column", default="text")
    for flag, kind in (("--model", str), ("--epochs", int), ("--max-steps", int), ("--batch-size", int),
                       ("--lr", float), ("--chunk-size", int), ("--num-workers", int)):
        p.add_argument(flag, type=kind, help="as for train (the same for v1 and v2)")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    _ray_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reviewlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("filter", help="keep the reviews that matter (Ray Data)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs or s3:// URIs")
    _output_options(p)
    for field in ("text", "id", "rating", "title", "brand", "product"):
        p.add_argument(f"--{field}-column", default=field, help=f"input column holding the {field}")
    p.add_argument("--format", choices=["csv", "tsv", "jsonl", "json", "parquet"],
                   help="input format (default: from each file's extension)")
    p.add_argument("--recipe", help="YAML filter recipe (default: the reference selection)")
    p.add_argument("--mode", choices=["drop", "annotate"], default="drop",
                   help="drop: split kept/rejected; annotate: keep every row with its scores")
    _ray_options(p)

    p = sub.add_parser("train", help="fine-tune DistilBERT on Ray Train (masked LM or 1-5 stars)")
    p.add_argument("--data", nargs="+", required=True, metavar="URI",
                   help="training reviews: a filter job's kept/ or any review dump")
    _output_options(p)
    p.add_argument("--task", choices=["mlm", "stars"], default="mlm")
    p.add_argument("--model", help="hub id (default distilbert-base-uncased), local or s3:// directory, "
                                   "starter or tiny (offline)")
    for field in ("text", "id", "rating"):
        p.add_argument(f"--{field}-column", default=field)
    p.add_argument("--format", choices=["csv", "tsv", "jsonl", "json", "parquet"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="per worker")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 5e-5 for mlm, 2e-4 for stars)")
    p.add_argument("--chunk-size", type=int, default=128, help="MLM: tokens per training block")
    p.add_argument("--max-length", type=int, default=128, help="stars: tokens per review")
    p.add_argument("--mlm-probability", type=float, default=0.15, help="token masking (when --whole-word-mask 0)")
    p.add_argument("--whole-word-mask", type=float, default=0.2, help="whole-word masking probability; 0: off")
    p.add_argument("--eval-fraction", type=float, default=0.1, help="MLM held-out fraction")
    p.add_argument("--max-eval-samples", type=int, help="evaluate on at most this many blocks or reviews")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="AMP on GPU")
    p.add_argument("--storage", help="where checkpoints go (default: OUT/checkpoints), local or s3://")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--seed", type=int, default=42)
    _ray_options(p)

    p = sub.add_parser("score", help="score [MASK] predictions of several models side by side (Ray Data)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=REF",
                   help="a model to score, repeatable: hub id, local or s3:// directory, starter, tiny")
    _output_options(p)
    p.add_argument("--prompts", help="file with one prompt per line, each with one or more [MASK]")
    p.add_argument("--templates", help="prompt templates over {brand} and {product} (text or YAML)")
    p.add_argument("--corpus", nargs="+", metavar="URI", help="held-out reviews to mask and score")
    p.add_argument("--text-column", default="text")
    p.add_argument("--rating-column", default="rating")
    p.add_argument("--id-column", default="id")
    p.add_argument("--words", help="YAML with wanted: and unwanted: word lists")
    p.add_argument("--task", choices=["mlm", "stars"], default="mlm")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256, help="rows per actor call")
    p.add_argument("--num-actors", type=int, help="actors per model (default: one per CPU, or GPU)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per actor, fp16")
    p.add_argument("--train-metrics", help="a train job's metrics.json, for the loss curve")
    p.add_argument("--filter-stats", help="a filter job's stats.json, for the funnel")
    _ray_options(p)

    p = sub.add_parser("synth", help="write a deterministic corpus of template reviews")
    _output_options(p)
    p.add_argument("--rows", type=int, default=25_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    p.add_argument("--shards", type=int, default=1, help="number of files")
    p.add_argument("--min-words", type=int, default=0, help="pad reviews with filler to at least this")
    p.add_argument("--max-words", type=int, default=0)

    p = sub.add_parser("pipeline", help="filter -> fine-tune v1 (all) and v2 (kept) -> score -> report")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="review dump (not with --demo)")
    _output_options(p)
    p.add_argument("--demo", action="store_true",
                   help="offline demo settings: synthesized corpus, starter model, small budget")
    _pipeline_options(p)

    p = sub.add_parser("demo", help="the pipeline end to end, offline, on a synthesized corpus")
    p.add_argument("--output", default="out/demo", help="output directory (replaced)")
    _pipeline_options(p)
    return parser


def run_filter(args) -> dict:
    from reviewlm.filters.recipe import load_recipe
    from reviewlm.filters.stage import filter_reviews
    from reviewlm.io.readers import Columns

    recipe = load_recipe(args.recipe)
    fields = ("text", "id", "rating", "title", "brand", "product")
    columns = Columns(**{f: getattr(args, f"{f}_column") for f in fields})
    stats = filter_reviews(args.inputs, args.output, recipe=recipe, columns=columns, fmt=args.format,
                           mode=args.mode, overwrite=args.overwrite, arguments=vars(args),
                           address=args.address, num_cpus=args.num_cpus)
    print(format_funnel(stats))
    print(f"wrote {args.output}")
    return stats


def format_funnel(stats: dict) -> str:
    lines = [f"rows read {stats['rows_read']}: kept {stats['kept']}, rejected {stats['rejected']}, "
             f"quarantined {stats['quarantined']}"]
    for f in stats["filters"]:
        lines.append(f"  {f['name']:<24} seen {f['seen']:>9}  passed {f['passed']:>9}  dropped {f['dropped']:>9}")
    return "\n".join(lines)


def run_train(args) -> dict:
    from reviewlm.io.readers import Columns
    from reviewlm.train.job import TrainArgs, train_model

    targs = TrainArgs(task=args.task, model=args.model, epochs=args.epochs, max_steps=args.max_steps,
                      batch_size=args.batch_size, lr=args.lr, chunk_size=args.chunk_size,
                      max_length=args.max_length, mlm_probability=args.mlm_probability,
                      whole_word_mask=args.whole_word_mask, eval_fraction=args.eval_fraction,
                      max_eval_samples=args.max_eval_samples,
                      num_workers=args.num_workers, use_gpu=args.use_gpu, precision=args.precision,
                      seed=args.seed)
    columns = Columns(text=args.text_column, id=args.id_column, rating=args.rating_column)
    metrics = train_model(args.data, args.output, targs, columns=columns, fmt=args.format, storage=args.storage,
                          overwrite=args.overwrite, resume=args.resume, address=args.address,
                          num_cpus=args.num_cpus, arguments=vars(args))
    print(format_training(metrics))
    print(f"wrote {args.output}")
    return metrics


def format_training(metrics: dict) -> str:
    """Before and after (the best epoch, which model/ holds), and the test split for stars."""
    best = metrics["best"]
    if metrics["task"] == "mlm":
        what = f"perplexity {metrics['perplexity_before']:.2f} before, {best['perplexity']:.2f}"
    else:
        what = f"eval loss {metrics['eval_loss_before']:.3f} before, {best['eval_loss']:.3f}"
    lines = [f"{metrics['task']} on {metrics['model']}: {what} after epoch {best['epoch']} of "
             f"{metrics['epochs'][-1]['epoch']} (model/ holds the best epoch)"]
    if "test" in metrics:
        t = metrics["test"]
        lines.append(f"test: accuracy {t['accuracy']:.3f}, binary {t['binary_accuracy']:.3f}, "
                     f"within one {t['within_one_accuracy']:.3f} (majority baseline {t['majority_baseline']:.3f})")
    return "\n".join(lines)


def run_score(args) -> dict:
    from reviewlm.io.readers import Columns
    from reviewlm.score.job import parse_models, score_models
    from reviewlm.score.prompts import gather_prompts, load_word_sets

    summary = score_models(
        parse_models(args.model), args.output, prompts=gather_prompts(args.prompts, args.templates, bool(args.corpus)),
        corpus=args.corpus, columns=Columns(text=args.text_column, rating=args.rating_column, id=args.id_column),
        word_sets=load_word_sets(args.words), task=args.task, top_k=args.top_k, batch_size=args.batch_size,
        num_actors=args.num_actors, use_gpu=args.use_gpu, train_metrics=args.train_metrics,
        filter_stats=args.filter_stats, overwrite=args.overwrite, address=args.address, num_cpus=args.num_cpus,
        arguments=vars(args))
    print(format_scores(summary))
    print(f"report: {args.output.rstrip('/')}/report.html")
    return summary


def format_scores(summary: dict) -> str:
    lines = []
    for name, m in summary["models"].items():
        parts = [f"{name:<10}"]
        if "wanted_share" in m:
            parts.append(f"wanted {m['wanted_share']:.2f} (mass {m['wanted_mass']:.3f})  "
                         f"unwanted {m['unwanted_share']:.2f} (mass {m['unwanted_mass']:.3f})")
        if "corpus" in m:
            parts.append(f"acc@1 {m['corpus']['accuracy_at_1']:.3f}  pppl {m['corpus']['pseudo_perplexity']:.1f}")
        if "stars" in m and "accuracy" in m["stars"]:
            parts.append(f"stars accuracy {m['stars']['accuracy']:.3f}")
        lines.append("  ".join(parts))
    if summary.get("invalid_prompts"):
        lines.append(f"{len(summary['invalid_prompts'])} prompt(s) could not be scored: see summary.json")
    return "\n".join(lines)


def run_synth(args) -> dict:
    from reviewlm.synth import write_synth

    manifest = write_synth(args.output, args.rows, args.seed, args.format, args.shards,
                           args.min_words, args.max_words, args.overwrite, vars(args))
    print(f"wrote {args.rows} reviews to {args.output}")
    return manifest


def run_pipeline(args) -> dict:
    from dataclasses import fields, replace

    from reviewlm.io.readers import Columns
    from reviewlm.pipeline import DEMO_ROWS, DEMO_TRAIN, PipelineArgs
    from reviewlm.pipeline import run_pipeline as run
    from reviewlm.train.job import TrainArgs

    demo = args.command == "demo" or args.demo
    if demo and getattr(args, "inputs", None):
        raise UsageError("--demo synthesizes its own corpus: give no INPUT")
    given = {f.name: getattr(args, f.name) for f in fields(TrainArgs)
             if getattr(args, f.name, None) not in (None, False)}
    train = replace(DEMO_TRAIN if demo else TrainArgs(), **given)
    pargs = PipelineArgs(inputs=getattr(args, "inputs", []), recipe=args.recipe,
                         columns=Columns(text=args.text_column), train=train)
    result = run(args.output, pargs, synth_rows=(args.rows or DEMO_ROWS) if demo else None,
                 overwrite=demo or args.overwrite, address=args.address, num_cpus=args.num_cpus,
                 arguments=vars(args))
    print(f"\nmodel: {train.model or 'distilbert-base-uncased'}"
          + (" (offline starter, not distilbert-base-uncased)" if train.model == "starter" else ""))
    print(f"{'':6}{'wanted share':>14}{'unwanted share':>16}{'wanted mass':>13}{'unwanted mass':>15}")
    for name, m in result["score"].items():
        print(f"{name:6}{m['wanted_share']:>14.2f}{m['unwanted_share']:>16.2f}{m['wanted_mass']:>13.3f}"
              f"{m['unwanted_mass']:>15.3f}")
    print(f"report: {os.path.abspath(result['report']) if '://' not in result['report'] else result['report']}")
    return result


COMMANDS = {"filter": run_filter, "train": run_train, "score": run_score, "pipeline": run_pipeline,
            "demo": run_pipeline, "synth": run_synth}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "verbose", False):
            os.environ[VERBOSE] = "1"
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
            print(f"reviewlm: error: {cause}", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1
    finally:
        _disconnect()


def _disconnect() -> None:
    """Leave Ray (stops a local Ray this process started) so the process can exit."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
