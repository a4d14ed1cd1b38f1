"""Connecting to Ray the same way on a laptop, under `ray job submit` and on a cluster."""

import logging
import os

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address`, to the cluster of a submitted job, or start a local Ray.

    Under `ray job submit`, RAY_ADDRESS is set and the job joins that cluster; `auto`
    joins a cluster started with `ray start`. Otherwise a new local Ray is started with
    `num_cpus` (default: all cores of this machine), never a stray running one.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = True
    _console_without_tracebacks()


class _NoTraceback(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None}))


def _console_without_tracebacks() -> None:
    """Ray Data logs a failed task's traceback; keep it in ray-data.log, off the console.

    The error itself reaches the caller (the CLI prints it as one line).
    """
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler" and handler.formatter is not None:
            handler.setFormatter(_NoTraceback(handler.formatter._fmt))
