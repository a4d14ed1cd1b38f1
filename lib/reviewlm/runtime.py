"""Connecting to Ray the same way on a laptop, under `ray job submit` and on a cluster, and a
console that holds the job's own lines."""

from __future__ import annotations

import io
import logging
import os
import select
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

from reviewlm.options import RunOptions

CONSOLE_LOG = "reviewlm-console.log"  # Ray's lines kept off the console, in the session's logs folder
# A task's return larger than this goes to the object store. Ray's default (100 KB) returns it
# into its owner's memory and inlines it into the specs of the tasks that read it, which the
# driver keeps for lineage: near_dedup's many small messages held ~20 bytes per review there.
SMALL_OBJECT_BYTES = 1024


def init_ray(run: RunOptions) -> None:
    """Connect to `run.address`, to the cluster of a submitted job, or start a local Ray.

    Under `ray job submit`, RAY_ADDRESS is set and the job joins that cluster; `auto`
    joins a cluster started with `ray start`. Otherwise a new local Ray is started with
    `run.num_cpus` (default: all cores of this machine) and `SMALL_OBJECT_BYTES` (cluster.yaml
    sets it for a cluster), never a stray running one. A Ray the caller already joined (a
    test's, a notebook's) is used as it is.

    Ray's log lines (its workers', Ray Data's and Ray Train's) go to the session's log
    files, named once on the console, unless `run.verbose` is set.
    """
    import ray.data

    if ray.is_initialized():
        return
    _divert_ray_records()
    logs = {"log_to_driver": run.verbose, "logging_level": logging.INFO if run.verbose else logging.WARNING}
    address = run.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **logs)
    else:
        ray.init(address="local", num_cpus=run.num_cpus or os.cpu_count(), include_dashboard=False, **logs,
                 _system_config={"max_direct_call_object_size": SMALL_OBJECT_BYTES})
        if not run.verbose:
            print(f"Ray logs: {logs_dir()} (--verbose to show them here)", file=sys.stderr)
    _quiet_ray_data(run.verbose)
    ray.data.DataContext.get_current().enable_progress_bars = run.verbose or sys.stderr.isatty()


def logs_dir() -> str | None:
    """The logs folder of the Ray session this process joined (None before it joined one)."""
    ray = sys.modules.get("ray")
    node = getattr(ray._private.worker.global_worker, "node", None) if ray is not None and ray.is_initialized() \
        else None
    return node.get_logs_dir_path() if node is not None else None


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


def _quiet_ray_data(verbose: bool) -> None:
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


@dataclass
class _Sink:
    """Lines kept off the console: into `CONSOLE_LOG` of the Ray session once there is one,
    held until then (and shown at the end when no Ray was joined)."""

    held: list[str]
    file: io.TextIOBase | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, text: str) -> None:
        with self.lock:
            if self.file is None and (folder := logs_dir()) is not None:
                self.file = open(os.path.join(folder, CONSOLE_LOG), "a", encoding="utf-8")
                self.file.write("".join(self.held))
                self.held.clear()
            if self.file is not None:
                self.file.write(text)
                self.file.flush()
            else:
                self.held.append(text)


_sink: _Sink | None = None  # while a quiet job console is open (`job_console`)
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class _ToSink(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if _sink is not None:
            _sink.write(_FORMAT.format(record) + "\n")


class _BelowErrors(logging.Filter):
    """Sends Ray's log records below ERROR to the open job console's sink instead of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or _sink is None:
            return True
        _ToSink().emit(record)
        return False


_BELOW_ERRORS = _BelowErrors()


def _divert_ray_records() -> None:
    """Ray's console handlers (set up when `ray` is imported; not its log files' handlers) pass
    only errors while a quiet job console is open."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "ray" or name.startswith("ray.")]
    for handler in {h for logger in loggers for h in logger.handlers}:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(_BELOW_ERRORS)


@contextmanager
def job_console(verbose: bool):
    """While a command runs, the console holds its own lines: what Ray writes to this process's
    stderr (its core worker's C++ log lines, such as the note on actors' constructor arguments,
    and its Python loggers' lines, such as the token-authentication notice) and Python
    warnings go to `CONSOLE_LOG` in the Ray session's logs folder instead, unless `verbose`.

    Ray's errors and what the job prints to `sys.stderr` still reach the console. Only a process whose
    `sys.stderr` is its real one (a command line, a submitted job) has its file descriptor 2
    redirected; a caller that captures `sys.stderr` (a test) keeps it as it is.
    """
    global _sink
    if verbose:
        yield
        return
    sink = _sink = _Sink([])
    warnings = logging.getLogger("py.warnings")
    handler, propagate = _ToSink(), warnings.propagate
    logging.captureWarnings(True)
    warnings.addHandler(handler)
    warnings.propagate = False
    redirected = _redirect_fd2(sink) if sys.stderr is sys.__stderr__ and _has_fd2() else None
    try:
        yield
    finally:
        if redirected is not None:
            redirected()
        _sink = None
        warnings.removeHandler(handler)
        warnings.propagate = propagate
        logging.captureWarnings(False)
        if sink.file is not None:
            sink.file.close()
        elif sink.held:  # no Ray session to keep them in
            sys.stderr.write("".join(sink.held))


def _has_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _redirect_fd2(sink: _Sink):
    """Point file descriptor 2 at a pipe drained into `sink`, and `sys.stderr` at the real
    console; return what undoes it, once the pipe is drained. (Processes this one started
    meanwhile may hold the pipe too: the drain stops when asked, not at the pipe's end.)"""
    sys.stderr.flush()
    console = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    original, stop = sys.stderr, threading.Event()
    sys.stderr = io.TextIOWrapper(io.FileIO(console, "w", closefd=False), encoding=original.encoding,
                                  errors="backslashreplace", line_buffering=True)

    def drain() -> None:
        while True:
            if select.select([read], [], [], 0.05)[0]:
                chunk = os.read(read, 1 << 16)
                if not chunk:
                    break
                sink.write(chunk.decode("utf-8", errors="backslashreplace"))
            elif stop.is_set():
                break
        os.close(read)

    reader = threading.Thread(target=drain, name="reviewlm-stderr", daemon=True)
    reader.start()

    def undo() -> None:
        sys.stderr.flush()
        os.dup2(console, 2)
        stop.set()
        reader.join(timeout=5)
        sys.stderr = original
        os.close(console)

    return undo


@dataclass(frozen=True)
class Pool:
    """How many model actors a Ray Data map runs, and what each one holds."""

    size: int
    resources: dict

    def limit(self, blocks: int) -> Pool:
        """No more actors than blocks to give them (each loads a model)."""
        return Pool(max(1, min(self.size, blocks)), self.resources)


def actor_pool(num_actors: int | None, use_gpu: bool, fed_by_tasks: bool = False) -> Pool:
    """Actors for a model: one per GPU, or one per CPU, or `num_actors`. A pool that tasks feed
    while it runs (reading a corpus, which needs a CPU per task) leaves one CPU free on CPUs,
    or those tasks could never be scheduled; on one CPU, one actor of half a CPU."""
    import ray

    resources = ray.cluster_resources()
    if use_gpu:
        return Pool(num_actors or max(1, int(resources.get("GPU", 1))), {"num_gpus": 1})
    cpus = int(resources.get("CPU", 1))
    if cpus < 2:
        return Pool(1, {"num_cpus": 0.5})
    size = num_actors or cpus
    return Pool(min(size, cpus - 1) if fed_by_tasks else size, {"num_cpus": 1})
