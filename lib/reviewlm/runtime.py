"""Connecting to Ray the same way on a laptop, under `ray job submit` and on a cluster."""

import logging
import os
import sys

from reviewlm.options import RunOptions

VERBOSE = "REVIEWLM_VERBOSE"  # set by `--verbose`: Ray's own log lines on the console too


def init_ray(run: RunOptions) -> None:
    """Connect to `run.address`, to the cluster of a submitted job, or start a local Ray.

    Under `ray job submit`, RAY_ADDRESS is set and the job joins that cluster; `auto`
    joins a cluster started with `ray start`. Otherwise a new local Ray is started with
    `run.num_cpus` (default: all cores of this machine), never a stray running one.

    Ray's log lines (its workers', Ray Data's and Ray Train's) go to the session's log
    files, named once on the console, unless `run.verbose` (or REVIEWLM_VERBOSE) is set.
    """
    import ray.data

    if ray.is_initialized():
        return
    verbose = run.verbose or bool(os.environ.get(VERBOSE))
    address = run.address or os.environ.get("RAY_ADDRESS")
    logs = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        ray.init(address=address, **logs)
    else:
        ray.init(address="local", num_cpus=run.num_cpus or os.cpu_count(), include_dashboard=False, **logs)
        if not verbose:
            print(f"Ray logs: {ray._private.worker.global_worker.node.get_logs_dir_path()} "
                  "(--verbose to show them here)", file=sys.stderr)
    _quiet_console(verbose)
    ray.data.DataContext.get_current().enable_progress_bars = verbose or sys.stderr.isatty()


class _NoTraceback(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None}))


NOT_FOR_USERS = (
    "does not have any available CPUs",  # our jobs hold CPUs on purpose (training workers,
    # scoring actors) while they read materialized data or leave a CPU free: no hang
    "Progress bars disabled",  # we turn them off where the console is not a terminal
)


def _no_false_alarm(record: logging.LogRecord) -> bool:
    """False for Ray Data's warnings that say nothing to our users (`NOT_FOR_USERS`)."""
    return not any(text in record.getMessage() for text in NOT_FOR_USERS)


def _quiet_console(verbose: bool) -> None:
    """Ray Data's console lines: warnings and errors only, unless verbose; never a traceback.

    A failed task's traceback stays in ray-data.log; the error itself reaches the caller
    (the CLI prints it as one line).
    """
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler" and handler.formatter is not None:
            handler.setFormatter(_NoTraceback(handler.formatter._fmt))
            if not verbose:
                handler.setLevel(logging.WARNING)
                handler.addFilter(_no_false_alarm)
