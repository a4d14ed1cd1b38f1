"""What Ray Train's controller poll interval costs a short run: `fit()` of two workers that
only report once, on one local Ray, at each interval in turn, interleaved.

    .venv/bin/python bench/train_poll.py [--repeat 3] [--intervals 2,0.5,0.1]

The controller sees a report (and registers its checkpoint), the run's end and a lost worker
only when it next polls the workers (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`, Ray's default 2 s);
a worker's `report` waits for that poll. reviewlm sets 0.05 s per worker, at least 0.1 s
(`reviewlm.train.job._polled`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def report_once(config: dict) -> None:
    import ray.train

    ray.train.report({"done": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--intervals", default="2,0.5,0.1")
    args = parser.parse_args()

    import ray
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    data = ray.data.range(1000).materialize()
    storage = tempfile.mkdtemp(prefix="train_poll")
    times: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        for interval in args.intervals.split(","):
            os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = interval
            start = time.perf_counter()
            TorchTrainer(report_once, scaling_config=ScalingConfig(num_workers=2), datasets={"train": data},
                         run_config=RunConfig(storage_path=storage, name=f"r{rep}-{interval}")).fit()
            times.setdefault(interval, []).append(time.perf_counter() - start)
    ray.shutdown()
    print("| poll interval | fit() of two workers, median s | runs |\n|---|---|---|")
    for interval, runs in times.items():
        print(f"| {interval} s | {statistics.median(runs):.2f} | {', '.join(f'{t:.2f}' for t in runs)} |")


if __name__ == "__main__":
    main()
