"""Paths and s3:// URIs through fsspec; input expansion; atomic job outputs."""

from __future__ import annotations

import json
import posixpath
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import pyarrow.fs as pafs

from reviewlm import __version__
from reviewlm.errors import UsageError, storage_error

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
_EXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
SECRET_WORDS = ("secret", "token", "password", "key", "credential")
SNIFF_BYTES = 1 << 20  # of a .json file, read to tell JSON Lines from an array


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the path inside it for a local path or URI."""
    fs, path = fsspec.core.url_to_fs(uri)
    if "file" not in fs.protocol:
        fs.invalidate_cache()  # listings must reflect writes by other processes
    return fs, path


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """An Arrow view of an fsspec filesystem (used by Ray readers and Parquet writers)."""
    if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """`path` with its scheme again (s3://bucket/key), or unchanged for local files."""
    return path if "file" in fs.protocol else fs.unstrip_protocol(path)


def compressed(path: str) -> bool:
    """Whether the file is read through a decompressor (by its extension), so only as a whole."""
    return path.lower().endswith(_COMPRESSIONS)


def infer_format(path: str) -> str | None:
    """csv/tsv/jsonl/json/parquet from the extension, looking through .gz and friends."""
    name = path.lower()
    for comp in _COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
    return _EXT_FORMATS.get(posixpath.splitext(name)[1])


@dataclass(frozen=True)
class InputFile:
    """One input file: its path on its filesystem, its full URI, format and size, and how its
    text is read: the CSV/TSV `delimiter`, the `encoding`, and whether its format was `sniffed`
    from its first line rather than taken from its extension."""

    path: str
    uri: str
    format: str
    size: int
    delimiter: str | None = None
    encoding: str = "utf-8"
    sniffed: bool = False

    @property
    def separator(self) -> str:
        """The CSV/TSV field separator: the one given, else ',' (csv) or a tab (tsv)."""
        return self.delimiter or ("\t" if self.format == "tsv" else ",")


def sniff_json(fs: fsspec.AbstractFileSystem, path: str, encoding: str) -> str:
    """jsonl for a .json file whose first line holds an object, not just its opening brace (JSON
    Lines, as the Yelp and Amazon dumps are published; a broken line is then quarantined on its
    own), else json (an array or one pretty-printed document)."""
    with fs.open(path, "rb", compression="infer") as fh:
        head = fh.read(SNIFF_BYTES).decode(encoding, errors="ignore").lstrip("\ufeff \t\r\n")
    return "jsonl" if head.startswith("{") and head.split("\n", 1)[0].strip() != "{" else "json"


@dataclass(frozen=True)
class Inputs:
    """A job's input files and the Arrow filesystem they are read with."""

    filesystem: pafs.FileSystem
    files: tuple[InputFile, ...]


def on_one_filesystem(uris: list[str], what: str) -> Iterator[tuple[str, fsspec.AbstractFileSystem, str]]:
    """Each URI with its filesystem and path; a UsageError when `what` (named so) are on two."""
    first = None
    for uri in uris:
        fs, path = filesystem(uri)
        if first is not None and type(fs) is not type(first):
            raise UsageError(f"{what} must all be local or all on one object store: {uri}")
        first = fs
        yield uri, fs, path


def files_under(fs: fsspec.AbstractFileSystem, path: str) -> list[str] | None:
    """The files a path names: itself, a glob's, or a directory's (but `_` and `.` ones); None if none is there."""
    if any(ch in path for ch in "*?["):
        return [p for p in fs.glob(path) if fs.isfile(p)]
    if fs.isdir(path):
        return [p for p in fs.find(path) if not posixpath.basename(p).startswith(("_", "."))]
    return [path] if fs.isfile(path) else None


def expand_inputs(inputs: list[str], fmt: str | None = None, delimiter: str | None = None,
                  encoding: str = "utf-8") -> Inputs:
    """Expand files, directories, globs and s3:// URIs into the readable files; a `.json` file
    is sniffed (`sniff_json`) unless `fmt` is given.

    Raises UsageError for a missing path or bucket, an unknown format, inputs on two
    filesystems, or no files at all.
    """
    files, fs = [], None
    for item, fs, path in on_one_filesystem(inputs, "inputs"):
        try:
            found = files_under(fs, path)
            if found is None:
                raise UsageError(f"input not found: {item}")
            if fs.isdir(path):
                found = [p for p in found if fmt or infer_format(p)]
        except OSError as exc:
            raise UsageError(f"cannot read input {item}: {storage_error(exc)}") from None
        if not found:
            raise UsageError(f"no review files under {item} (csv, tsv, jsonl, json, parquet)")
        for p in sorted(found):
            f = fmt or infer_format(p)
            if f is None:
                raise UsageError(f"cannot tell the format of {full_uri(fs, p)}: pass {{o}}", o="format")
            size = int(fs.size(p) or 0)
            try:
                sniffed = f == "json" and not fmt and size > 0 and sniff_json(fs, p, encoding) == "jsonl"
            except OSError as exc:
                raise UsageError(f"cannot read input {full_uri(fs, p)}: {storage_error(exc)}") from None
            files.append(InputFile(p, full_uri(fs, p), "jsonl" if sniffed else f, size, delimiter, encoding, sniffed))
    if not files:
        raise UsageError("no input files given")
    if all(f.size == 0 for f in files):
        raise UsageError(f"input is empty: {', '.join(f.uri for f in files[:3])}")
    return Inputs(arrow_filesystem(fs), tuple(files))


def fingerprints(inputs: Inputs | None) -> list[dict]:
    """Input fingerprints for the manifest: uri, size and, where the store reports it, mtime."""
    if inputs is None:
        return []
    infos = inputs.filesystem.get_file_info([f.path for f in inputs.files])
    return [{"uri": f.uri, "size": f.size, **({"mtime": info.mtime.isoformat()} if info.mtime else {})}
            for f, info in zip(inputs.files, infos)]


USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(arguments: dict) -> dict:
    """Arguments for a manifest: secret-named values and `user:password@` in URIs masked."""
    return {k: ("***" if any(w in k.lower() for w in SECRET_WORDS) and v else _mask_userinfo(v))
            for k, v in arguments.items()}


def _mask_userinfo(value):
    if isinstance(value, str):
        return USERINFO.sub("***@", value)
    if isinstance(value, (list, tuple)):
        return [_mask_userinfo(v) for v in value]
    return value


@dataclass
class OutputDir:
    """One job's output directory, written never partially.

    Data goes under `<out>/_temporary/<run>/`; `commit()` moves it into place, writes the
    JSON files and finally the `_SUCCESS` manifest. Readers trust an output only when
    `_SUCCESS` exists. Jobs use it as DataTrove's writers are used: `with out: ...;
    out.commit(...)`, and an error inside the block aborts the run's writes.

    `overwrite` swaps: a previous output stays as it was, `_SUCCESS` included, until the new
    run commits; a failed or killed run leaves it untouched. The commit then removes the old
    `_SUCCESS` first, sets the old entries aside (`in_place` names those this run wrote into
    the output itself, as the pipeline's stages), moves the new ones in and removes the old.

    A run records its arguments and inputs (`_plan.json`) beside its data, and a run that
    fails on anything but bad input keeps what it wrote: `--resume` checks that it is given
    the same arguments and inputs, then continues (a `ledger` job in the same run folder,
    skipping what that run recorded as written, reviewlm.io.ledger; a `carry` job there too,
    from the entries it names). An interrupted `--overwrite` resumes with `--overwrite
    --resume`, and still swaps at its commit.
    """

    uri: str
    job: str
    overwrite: bool = False
    in_place: tuple[str, ...] = ()
    ledger: bool = False  # resumes by the interrupted run's ledger, in its run folder
    carry: tuple[str, ...] = ()  # or in its run folder, keeping only these entries (train: checkpoints)
    replacing: bool = False  # set by `prepare`: an output is there, and overwrite was asked
    resumed: bool = False  # set by `prepare`: continuing an interrupted run

    def __post_init__(self):
        self.fs, self.path = filesystem(self.uri)
        self.path = self.path.rstrip("/")
        self.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        self.started = time.time()

    @property
    def tmp(self) -> str:
        return f"{self.path}/_temporary/{self.run_id}"

    def tmp_uri(self, sub: str = "") -> str:
        return full_uri(self.fs, posixpath.join(self.tmp, sub) if sub else self.tmp)

    def prepare(self, resume: bool = False, arguments: dict | None = None,
                inputs: list[dict] | None = None) -> "OutputDir":
        """Refuse an existing output unless overwrite (or resume, which keeps what is there).

        The run's plan (`arguments`, `inputs`) is written first, so an output we may not
        write fails now, not after hours of work.
        """
        plan = {"job": self.job, "arguments": comparable(arguments or {}), "inputs": inputs or []}
        try:
            exists = self.fs.exists(self.path) and bool(self.fs.ls(self.path))
            complete = exists and self.fs.exists(f"{self.path}/_SUCCESS")
            previous = self.interrupted() if resume else None
            if resume and complete and not (self.overwrite and previous):
                hint = " (an interrupted {o} run is there too: pass {o} with {r} to continue it)" if previous else ""
                raise UsageError(f"output {self.uri} is complete: nothing to resume{hint}", o="overwrite", r="resume")
            if exists and not (self.overwrite or resume):
                hint = "" if complete else " (an interrupted run: pass {r} to continue it)"
                raise UsageError(f"output {self.uri} already exists: pass {{o}} to replace it{hint}",
                                 o="overwrite", r="resume")
            if resume:
                if previous is None:
                    raise UsageError(f"output {self.uri} holds no interrupted {self.job} run to resume")
                _same_plan(json.loads(self.fs.cat(f"{self.path}/_temporary/{previous}/{PLAN}")), plan)
                if self.ledger or self.carry:
                    self.run_id = previous
                if self.carry:  # the rest of the interrupted run's folder is written again
                    for entry in self.fs.ls(self.tmp, detail=False):
                        if posixpath.basename(entry.rstrip("/")) not in self.carry:
                            self.fs.rm(entry, recursive=True)
                self.resumed = True
            self.replacing = complete if resume else exists  # a resumed --overwrite still replaces
            self.fs.makedirs(self.tmp, exist_ok=True)
            self.fs.pipe(f"{self.tmp}/{PLAN}", json.dumps(plan, default=str).encode())
        except OSError as exc:
            raise UsageError(f"cannot write output {self.uri}: {storage_error(exc)}") from None
        return self

    def interrupted(self) -> str | None:
        """The run folder of the latest run that recorded its plan and did not commit."""
        runs = sorted(self.fs.glob(f"{self.path}/_temporary/*/{PLAN}"))
        return posixpath.basename(posixpath.dirname(runs[-1])) if runs else None

    def commit(self, arguments: dict, inputs: list[dict], counts: dict, extra_json: dict | None = None) -> dict:
        """Move the data into place (replacing a previous output), write `extra_json` files,
        then `_SUCCESS` last."""
        local = "file" in self.fs.protocol
        if not local:  # the run's tasks wrote (and a resume removed) objects this process has not seen
            self.fs.invalidate_cache()
        for what in (PLAN, LEDGER):  # the run's own records are not output
            if self.fs.exists(f"{self.tmp}/{what}"):
                self.fs.rm(f"{self.tmp}/{what}", recursive=True)
        old = self._set_aside(local) if self.replacing else []
        if local:  # one rename per folder
            for sub in self.fs.ls(self.tmp, detail=False):
                self.fs.mv(sub, f"{self.path}/{posixpath.basename(sub.rstrip('/'))}", recursive=True)
        else:  # object stores have no folders: copy the objects in one batch
            sources = self.fs.find(self.tmp)
            if sources:
                self.fs.copy(sources, [self.path + src[len(self.tmp):] for src in sources])
            written = {self.path + src[len(self.tmp):] for src in sources} | {
                f"{self.path}/{name}" for name in (*(extra_json or {}), "_SUCCESS")}
            gone = [key for key in old if key not in written]
            if gone:
                self.fs.rm(gone)
        for name, payload in (extra_json or {}).items():
            self.write_json(name, payload)
        if self.fs.exists(f"{self.path}/_temporary"):  # an object store has no empty folders
            self.fs.rm(f"{self.path}/_temporary", recursive=True)
        manifest = {"job": self.job, "version": __version__, "run_id": self.run_id,
                    "arguments": redact(arguments), "inputs": inputs, "counts": counts,
                    "started": self.started, "wall_time_s": round(time.time() - self.started, 3)}
        self.write_json("_SUCCESS", manifest)
        return manifest

    def _set_aside(self, local: bool) -> list[str]:
        """The previous output's entries this run replaces, once its `_SUCCESS` is removed:
        locally moved under `_temporary/` (removed with it); on an object store, the keys to
        delete once the new objects are copied (what a reader meanwhile sees: no `_SUCCESS`)."""
        if self.fs.exists(f"{self.path}/_SUCCESS"):
            self.fs.rm(f"{self.path}/_SUCCESS")
        keep = {"_temporary", *self.in_place}
        entries = [e for e in self.fs.ls(self.path, detail=False)
                   if posixpath.basename(e.rstrip("/")) not in keep]
        if not local:
            return [key for e in entries for key in (self.fs.find(e) or [e])]
        aside = f"{self.tmp}.replaced"
        self.fs.makedirs(aside, exist_ok=True)
        for e in entries:
            self.fs.mv(e, f"{aside}/{posixpath.basename(e.rstrip('/'))}", recursive=True)
        return []

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        """On bad input, remove what this run wrote (`abort`); on any other error or an
        interrupt keep it, for `--resume`. The error goes on."""
        if kind is not None and issubclass(kind, UsageError):
            self.abort()
        return False

    def abort(self) -> None:
        """Remove the temporary location after a failure, and the output if left empty."""
        for path in (self.tmp, f"{self.path}/_temporary", self.path):
            try:
                if path == self.tmp or not self.fs.ls(path):
                    self.fs.rm(path, recursive=True)
            except OSError:
                return

    def write_json(self, name: str, payload: dict) -> None:
        with self.fs.open(f"{self.path}/{name}", "w") as fh:
            json.dump(payload, fh, indent=2, default=str)


PLAN, LEDGER = "_plan.json", "_ledger"
# what may change when a run is resumed: where and how it runs, not what it computes
RESUMABLE_CHANGES = frozenset({"resume", "overwrite", "verbose", "address", "num_cpus", "num_actors"})


def comparable(arguments: dict) -> dict:
    """Arguments as a manifest records them, without those a resumed run may change."""
    return json.loads(json.dumps({k: v for k, v in redact(arguments).items() if k not in RESUMABLE_CHANGES},
                                 default=str))


def _same_plan(before: dict, now: dict) -> None:
    """A UsageError naming the first argument or input that differs from the interrupted run's."""
    old, new = before["arguments"], now["arguments"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key.endswith("_sha256"):  # a file's content (cli.CONTENT_FILES)
                raise UsageError("cannot resume: the file {k} names changed since the interrupted run "
                                 "(pass {o} to start over)", o="overwrite", k=key.removesuffix("_sha256"))
            what = "the inputs" if key == "inputs" else "{k}"
            raise UsageError(f"cannot resume: {what} was {old.get(key)!r} in the interrupted run, now "
                             f"{new.get(key)!r} (pass {{o}} to start over)", o="overwrite", k=key)
    was, now_in = ({f["uri"]: f for f in p["inputs"]} for p in (before, now))
    for uri in list(was) + [u for u in now_in if u not in was]:
        if was.get(uri) != now_in.get(uri):
            change = "is new" if uri not in was else "is gone" if uri not in now_in else "changed"
            raise UsageError(f"cannot resume: input {uri} {change} since the interrupted run "
                             f"(pass {{o}} to start over)", o="overwrite")


def read_json(uri: str) -> dict:
    """A JSON file written by a finished reviewlm job (its folder has `_SUCCESS`)."""
    folder = uri.rsplit("/", 1)[0] if "/" in uri else "."
    read_success(folder)
    fs, path = filesystem(uri)
    try:
        with fs.open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {uri}: {storage_error(exc)}") from None


def read_success(uri: str) -> dict:
    """The `_SUCCESS` manifest of a finished job output, or UsageError if it is incomplete."""
    fs, path = filesystem(uri)
    marker = f"{path.rstrip('/')}/_SUCCESS"
    if not fs.exists(marker):
        raise UsageError(f"{uri} is not a finished reviewlm output (no _SUCCESS)")
    with fs.open(marker) as fh:
        return json.load(fh)
