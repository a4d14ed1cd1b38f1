"""What a small job costs: each job on a tiny input as a whole process, over a bare
`ray.init(); ray.shutdown()` timed in the same run, and the passes Ray Data made for it.

    .venv/bin/python bench/fixed_cost.py [--repeat 3] [--before OTHER/lib] [--jobs train,score]

Inputs, made once: 1,000 synthesized reviews; a 200-product catalogue with its 22 needs,
reviews and judgments (`synth --kind catalog`); 2 prompts; the offline `tiny` model. Each job
runs as `reviewlm ... --num-cpus 2` (a local Ray of its own), with the defaults otherwise:
`filter` (the reference recipe), `train --model tiny --max-steps 2` (masked LM, and the 1-5
star classifier), `score --model t=tiny --prompts` and `recommend` (the `starter` encoder,
with reviews and judgments). The runs are interleaved, `--repeat` times; the medians are
reported, and each job's ratio to the bare start. With `--before`, each job also runs, in
turn with the others, on the code in that folder (`PYTHONPATH`: a worktree of an earlier
commit), so that a change is measured against its baseline in the same run.

From each job's Ray Data log (`ray-data.log` of its session): the executions (each a pass
over some data), the all-to-all steps among them (shuffles: group-by, join, sort, hash
aggregate, repartition; whatever their size they cost seconds on Ray 2.60) and the `count()`s.

Goals (issue 36): filter <= 2.0x, score <= 2.5x, train <= 4x, recommend <= 3x the bare start.

Floors, timed in the same run: what Ray and the model cost before any job's own work, as a
whole process. `floor: model actor` starts Ray, one actor that imports transformers and loads
a model (`tiny` as score's; `starter` as recommend's encoder) and stops Ray; `floor: Ray
Train` starts Ray, has `TorchTrainer.fit()` load `tiny` on 2 workers and report once (with
the controller's poll interval the train job sets), and stops Ray. A job can go below its
floor only by not starting its processes at all.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
BARE = "import ray; ray.init(num_cpus=2, include_dashboard=False); ray.shutdown()"
GOALS = {"filter": 2.0, "score": 2.5, "train": 4.0, "recommend": 3.0}
ACTOR = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False)

@ray.remote(num_cpus=1)
class Model:
    def __init__(self, ref, kind):
        import transformers
        from reviewlm.models import resolve_model
        self.model = getattr(transformers, kind).from_pretrained(resolve_model(ref))

    def ready(self):
        return True

ray.get(Model.remote(*sys.argv[1:]).ready.remote())
ray.shutdown()
"""
TRAIN = """
import os, tempfile, ray
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"  # as the train job sets it for 2 workers
ray.init(num_cpus=2, include_dashboard=False)

def load(config):
    import ray.train.torch
    from transformers import AutoModelForMaskedLM
    from reviewlm.models import resolve_model
    ray.train.torch.prepare_model(AutoModelForMaskedLM.from_pretrained(resolve_model("tiny")))
    ray.train.report({"loaded": 1})

TorchTrainer(load, scaling_config=ScalingConfig(num_workers=2),
             run_config=RunConfig(storage_path=tempfile.mkdtemp())).fit()
ray.shutdown()
"""
FLOORS = {"floor: model actor (tiny)": ["-c", ACTOR, "tiny", "AutoModelForMaskedLM"],
          "floor: model actor (starter)": ["-c", ACTOR, "starter", "AutoModel"],
          "floor: Ray Train": ["-c", TRAIN]}
SHUFFLES = re.compile(r"ShuffleReduceOp\[|AllToAllOperator\[(?!RandomizeBlockOrder)")


def jobs(data: Path, out: Path) -> dict[str, list[str]]:
    shop = data / "shop"
    return {
        "filter": ["filter", data / "reviews", "--output", out / "filter"],
        "train": ["train", "--data", data / "reviews", "--model", "tiny", "--max-steps", 2, "--output", out / "train"],
        "train (stars)": ["train", "--task", "stars", "--data", data / "reviews", "--model", "tiny", "--max-steps", 2,
                          "--output", out / "stars"],
        "score": ["score", "--model", "t=tiny", "--prompts", data / "prompts.txt", "--output", out / "score"],
        "recommend": ["recommend", "--catalog", shop / "catalog.jsonl", "--queries", shop / "needs.txt", "--reviews",
                      shop / "reviews.jsonl", "--judgments", shop / "judgments.jsonl", "--output", out / "recommend"],
    }


def prepare(data: Path) -> None:
    reviewlm = str(BIN / "reviewlm")
    subprocess.run([reviewlm, "synth", "--rows", "1000", "--output", str(data / "reviews")], env=ENV, check=True,
                   capture_output=True)
    subprocess.run([reviewlm, "synth", "--kind", "catalog", "--rows", "200", "--output", str(data / "shop")], env=ENV,
                   check=True, capture_output=True)
    (data / "prompts.txt").write_text("Nike shoes are very [MASK].\nNike t-shirts are famous for being [MASK].\n")
    subprocess.run([str(BIN / "python"), "-c", "from reviewlm.models import resolve_model; resolve_model('tiny')"],
                   env=ENV, check=True)


def timed(argv: list, lib: str | None = None) -> float:
    start = time.perf_counter()
    env = ENV if lib is None else {**ENV, "PYTHONPATH": lib}
    res = subprocess.run(list(map(str, argv)), env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - start


def passes() -> dict[str, int]:
    """Executions, all-to-all steps and count()s in the latest Ray session's Ray Data log."""
    log = Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs" / "ray-data" / "ray-data.log"
    plans = re.findall(r"Execution plan of Dataset [^:]*: (.*)", log.read_text()) if log.exists() else []
    return {"executions": len(plans), "all-to-all": sum(len(SHUFFLES.findall(p)) for p in plans),
            "count()": sum(p.count("AggregateNumRows[") for p in plans)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--before", help="a lib/ folder of the code to compare with")
    ap.add_argument("--jobs", help="only these jobs, comma-separated (names as printed: train,train (stars); "
                                   "floor: the floors)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="reviewlm-fixed-"))
    prepare(root)
    times: dict[str, list[float]] = {"bare start": []}
    steps = {}
    for r in range(args.repeat):
        times["bare start"].append(timed([BIN / "python", "-c", BARE]))
        if not args.jobs or "floor" in args.jobs.split(","):
            for name, argv in FLOORS.items():
                times.setdefault(name, []).append(timed([BIN / "python", *argv]))
        for name, argv in jobs(root, root / f"out{r}").items():
            if args.jobs and name not in args.jobs.split(","):
                continue
            if args.before:
                before = [root / f"before{r}" / a.name if isinstance(a, Path) and a.parent == root / f"out{r}" else a
                          for a in argv]
                times.setdefault(f"{name} before", []).append(
                    timed([BIN / "reviewlm", *before, "--num-cpus", 2], args.before))
            times.setdefault(name, []).append(timed([BIN / "reviewlm", *argv, "--num-cpus", 2]))
            steps[name] = passes()
    bare = statistics.median(times["bare start"])
    print(f"{'job':<30}{'median s':>9}{'x bare':>8}{'goal':>7}{'passes':>8}{'all-to-all':>12}{'count()':>9}  runs")
    for name, runs in times.items():
        median = statistics.median(runs)
        goal = GOALS.get(name.split(" ")[0])
        s = steps.get(name, {})
        print(f"{name:<30}{median:>9.1f}{median / bare:>8.2f}{(f'{goal:.1f}' if goal else ''):>7}"
              f"{s.get('executions', ''):>8}{s.get('all-to-all', ''):>12}{s.get('count()', ''):>9}  "
              + ", ".join(f"{t:.1f}" for t in runs), flush=True)


if __name__ == "__main__":
    main()
