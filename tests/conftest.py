"""Shared fixtures: a moto S3 server on 127.0.0.1 and one local Ray cluster (2 CPUs)."""

import atexit
import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import psutil
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
if "REVIEWLM_CACHE" not in os.environ:  # one model cache for the run, its Ray's workers and its subprocesses
    os.environ["REVIEWLM_CACHE"] = tempfile.mkdtemp(prefix="reviewlm-cache-")
    atexit.register(shutil.rmtree, os.environ["REVIEWLM_CACHE"], True)
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server; fake credentials and the endpoint are set before Ray starts."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("reviews")
    yield fs
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster(s3):
    import ray

    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False)  # the state API needs it
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny():
    """The tiny offline masked LM, built once into the run's model cache."""
    from reviewlm.models import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def killable_corpus(tmp_path_factory):
    """4 files of 12,000 reviews of 20-40 words: a filter job on 2 CPUs runs long enough to be
    killed mid-write, each task writing several batches."""
    from reviewlm.synth import write_synth

    path = tmp_path_factory.mktemp("killable") / "corpus"
    write_synth(str(path), 48_000, seed=5, shards=4, min_words=20, max_words=40)
    return str(path)


def run_cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run the installed `reviewlm` console script: for tests of the process itself (its exit
    code and console, kills, a Ray of its own)."""
    return subprocess.run([str(BIN / "reviewlm"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def run_job(*args, env=None) -> subprocess.CompletedProcess:
    """`reviewlm ARGS` in this process, on the test run's Ray (the `ray_cluster` fixture), as
    `cli.main` runs it for the console script: its exit code and what it printed."""
    import ray
    from reviewlm.cli import main

    assert ray.is_initialized(), "run_job runs on the test run's Ray: ask for the ray_cluster fixture"
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert ray.is_initialized(), "a job left the test run's Ray"
    return subprocess.CompletedProcess(["reviewlm", *map(str, args)], code, out.getvalue(), err.getvalue())


def assert_one_line(res: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2 and exactly one stderr line, ours, holding `message`; no traceback."""
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert lines[0].startswith("reviewlm: error: ") and message in lines[0], lines[0]


def kill_job_when(argv: list, ready, timeout: float = 300) -> None:
    """Start `argv` in its own process group; once `ready()`, SIGKILL the driver and every
    process under it at once: the local Ray it started, and Ray's workers, each of which sits
    in a process group of its own (a kill of the group alone leaves them writing for a while)."""
    job = subprocess.Popen(list(map(str, argv)), start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not ready():
        assert job.poll() is None and time.time() < deadline, job.stderr.read()[-2000:]
        time.sleep(0.05)
    kill_tree(job.pid)
    job.wait()


def kill_tree(pid: int) -> None:
    """SIGKILL a process's group and every process under it."""
    under = psutil.Process(pid).children(recursive=True)
    os.killpg(pid, signal.SIGKILL)
    for p in under:
        with contextlib.suppress(psutil.Error):
            p.kill()


class Killer(threading.Thread):
    """SIGKILLs the first PID `find()` returns once `ready()` holds: a fault from outside the job."""

    def __init__(self, find, ready=lambda: True, timeout=300):
        super().__init__(daemon=True)
        self.find, self.ready, self.deadline = find, ready, time.time() + timeout
        self.killed: list[int] = []
        self.start()

    def run(self):
        while not self.killed and time.time() < self.deadline:
            pids = self.find() if self.ready() else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                self.killed.append(pids[0])
            time.sleep(0.05)  # a filter task may run for half a second


def ray_titles() -> dict[int, str]:
    """The title Ray gives each of its worker processes (`ray::<task name>` while it runs a task,
    `ray::Class` or `ray::Class.method` for an actor), by PID: seen at once, where Ray's state API
    reports a task or an actor up to a second late."""
    titles = {}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            title = " ".join(p.cmdline()).strip()
            if title.startswith("ray::"):
                titles[p.pid] = title
    return titles


def running_task_pids(name_part: str) -> list[int]:
    """PIDs of Ray workers running a task whose name contains `name_part` (a filter task here may
    run for half a second)."""
    return [pid for pid, title in ray_titles().items() if name_part in title]


def actor_pids(class_name: str) -> list[int]:
    """PIDs of the live Ray actors of this class (a short training run ends within a second)."""
    return [pid for pid, title in ray_titles().items()
            if title == f"ray::{class_name}" or title.startswith(f"ray::{class_name}.")]


class FaultyS3(ThreadingHTTPServer):
    """An HTTP proxy in front of the moto server that answers some requests with an S3 error.

    `fault(method, path, headers)` returns `(status, code, message)` to fail a request, or
    None to pass it on. `failed` lists what was failed.
    """

    daemon_threads = True

    def __init__(self, upstream: str, fault):
        self.upstream, self.fault, self.failed = urllib.parse.urlsplit(upstream).netloc, fault, []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _handle(self):
        body = self._body()
        failure = self.server.fault(self.command, self.path, self.headers)
        if failure:
            self.server.failed.append((self.command, self.path, failure[1]))
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{failure[1]}</Code>'
                       f"<Message>{failure[2]}</Message></Error>").encode()
            self.send_response(failure[0])
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.server.upstream, timeout=60)
        conn.request(self.command, self.path, body=body, headers=headers)
        res = conn.getresponse()
        data = res.read()
        self.send_response(res.status)
        for k, v in res.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", res.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    def _body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", ""):
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


def node_processes(marker: str) -> list[psutil.Process]:
    """What a `ray start` started (GCS, raylet, agents, workers) and is still running: the
    processes with `marker` in their environment (Ray's Python processes overwrite it with
    their title), in their command line or among their open files, and their descendants."""
    found = {}
    for p in psutil.process_iter():
        try:
            env = p.environ().get("REVIEWLM_TEST_NODE", "")
            if env.startswith(marker) or marker in " ".join(p.cmdline()) or \
                    any(f.path.startswith(marker) for f in p.open_files()):
                found.update({q.pid: q for q in [p, *p.children(recursive=True)]})
        except psutil.Error:
            pass
    return list(found.values())


def stop_nodes(temp: str) -> None:
    """SIGKILL what `ray start --temp-dir=temp` started, and remove its folder; a process that
    exits while the others are killed is fine."""
    for p in node_processes(temp):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    shutil.rmtree(temp, ignore_errors=True)


def registered(out) -> int:
    """Checkpoints Ray Train has registered (its manager's snapshot): the ones a restart resumes from.

    One on disk is not enough: the controller registers reports when it polls the workers
    (every 0.1 s here), and a checkpoint written just before a fault is never registered.
    """
    try:
        snapshot = json.loads((out / "checkpoints" / "run" / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return 0
    return len(snapshot["checkpoint_results"])
