"""`reviewlm <command>`: every job is also a function you can import.

Exit codes: 0 done; 2 bad usage or bad input (one line on stderr); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from reviewlm.errors import UsageError, usage_cause


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all cores)")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="output directory, local or s3://")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


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

    p = sub.add_parser("synth", help="write a deterministic corpus of template reviews")
    _output_options(p)
    p.add_argument("--rows", type=int, default=25_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], default="jsonl")
    p.add_argument("--shards", type=int, default=1, help="number of files")
    p.add_argument("--min-words", type=int, default=0, help="pad reviews with filler to at least this")
    p.add_argument("--max-words", type=int, default=0)

    p = sub.add_parser("demo", help="the pipeline end to end, offline, on a synthesized corpus")
    p.add_argument("--output", default="out/demo", help="output directory (replaced)")
    p.add_argument("--rows", type=int, default=25_000)
    _ray_options(p)
    return parser


def run_filter(args) -> dict:
    from reviewlm.filters.recipe import load_recipe
    from reviewlm.filters.stage import filter_reviews
    from reviewlm.io.readers import Columns

    recipe = load_recipe(args.recipe)
    columns = Columns(**{f: getattr(args, f"{f}_column") for f in ("text", "id", "rating", "title", "brand", "product")})
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


def run_synth(args) -> dict:
    from reviewlm.synth import write_synth

    manifest = write_synth(args.output, args.rows, args.seed, args.format, args.shards,
                           args.min_words, args.max_words, args.overwrite, vars(args))
    print(f"wrote {args.rows} reviews to {args.output}")
    return manifest


def run_demo(args) -> dict:
    from reviewlm.filters.recipe import load_recipe
    from reviewlm.filters.stage import filter_reviews
    from reviewlm.synth import write_synth

    base = args.output.rstrip("/")
    print(f"[1/2] synthesizing {args.rows} template reviews -> {base}/corpus")
    write_synth(f"{base}/corpus", args.rows, seed=0, overwrite=True)
    print(f"[2/2] filtering with the default recipe -> {base}/filter")
    stats = filter_reviews([f"{base}/corpus"], f"{base}/filter", recipe=load_recipe(), overwrite=True,
                           arguments=vars(args), address=args.address, num_cpus=args.num_cpus)
    print(format_funnel(stats))
    print(f"demo output: {os.path.abspath(base)}  (kept reviews: {base}/filter/kept, funnel: {base}/filter/stats.json)")
    return stats


COMMANDS = {"filter": run_filter, "synth": run_synth, "demo": run_demo}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
