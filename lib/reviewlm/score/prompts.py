"""Prompts to score: files, templates expanded over brands and products, or the defaults."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import ray
import yaml
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from reviewlm import words as wordlists
from reviewlm.errors import UsageError
from reviewlm.io.storage import files_under, filesystem, full_uri, on_one_filesystem
from reviewlm.options import MAX_PROMPT_BLOCKS, PROMPTS_PER_PIECE

MASK = "[MASK]"
REFERENCE_PROMPTS = [
    "Nike shoes are very [MASK].",
    "Nike athletic wear is known for being very [MASK].",
    "Nike [MASK] shoes are very comfortable.",
    "Trousers and hoodies made by [MASK] are not very expensive.",
    "Nike t-shirts are famous for being [MASK].",
]


def _read_text(uri: str, what: str) -> str:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {uri}: {exc}") from None


def _prompt(line: str) -> str | None:
    """The prompt on a line, or None for a blank line or one starting with #."""
    line = line.rstrip("\n").rstrip("\r")
    return line if line.strip() and not line.lstrip().startswith("#") else None


def _prompt_lines(lines: Iterable[str]) -> Iterator[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    for line in lines:
        if (prompt := _prompt(line)) is not None:
            yield prompt


def read_prompts(uri: str) -> list[str]:
    """The lines of a small text file (templates) that hold a prompt."""
    prompts = list(_prompt_lines(_read_text(uri, "prompts").split("\n")))
    if not prompts:
        raise UsageError(f"prompts file {uri} has no prompts")
    return prompts


OFFSET_STRIDE = 64  # a prompt file's byte offset is kept for every 64th prompt


@dataclass(frozen=True)
class PromptFile:
    """A prompts file: where it is, the numbers of its prompts (`first` .. `first + count - 1`)
    and the byte offset of every `OFFSET_STRIDE`-th prompt, where a read may start."""

    path: str
    uri: str
    first: int
    count: int
    offsets: tuple[int, ...]


PROMPT_SCHEMA = pa.schema([("prompt", pa.string()), ("prompt_index", pa.int64())])


def _per_piece(count: int, pieces: int) -> int:
    """Prompts per block for `count` prompts cut into about `pieces`, and into at most
    `MAX_PROMPT_BLOCKS`: a multiple of the stride."""
    per = min(PROMPTS_PER_PIECE, -(-count // max(1, pieces)))
    per = max(per, -(-count // MAX_PROMPT_BLOCKS))
    return -(-per // OFFSET_STRIDE) * OFFSET_STRIDE


def _read_prompts(fs, path: str, offset: int, first: int, count: int) -> Iterator[pa.Table]:
    """`count` prompts of the file at `path` from byte `offset`, numbered from `first`."""
    with fs.open(path, "rb") as fh:
        fh.seek(offset)
        lines = list(itertools.islice(_prompt_lines(raw.decode("utf-8") for raw in fh), count))
    yield pa.table([lines, range(first, first + count)], schema=PROMPT_SCHEMA)


class PromptDatasource(Datasource):
    """Prompt files cut into runs of `per` prompts, a read task each: rows of `prompt` and its
    `prompt_index`."""

    def __init__(self, fs, files: tuple[PromptFile, ...], per: int):
        self._fs, self._files, self._per = fs, files, per

    def estimate_inmemory_data_size(self) -> None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        # a task carries its own offset, not the file's (a million prompts: 15,625 offsets)
        return [ReadTask(partial(_read_prompts, self._fs, f.path, f.offsets[start // OFFSET_STRIDE],
                                 f.first + start, n),
                         BlockMetadata(num_rows=n, size_bytes=None, exec_stats=None, input_files=(f.path,)),
                         schema=PROMPT_SCHEMA, per_task_row_limit=per_task_row_limit)
                for f in self._files for start in range(0, f.count, self._per)
                for n in [min(self._per, f.count - start)]]


def _count_prompts(fh) -> tuple[int, tuple[int, ...]]:
    """The prompts of an open binary file and the byte offset of every `OFFSET_STRIDE`-th."""
    count, offset, offsets = 0, 0, []
    for raw in fh:
        if _prompt(raw.decode("utf-8")) is not None:
            if count % OFFSET_STRIDE == 0:
                offsets.append(offset)
            count += 1
        offset += len(raw)
    return count, tuple(offsets)


def prompt_files(uris: list[str]) -> tuple[object, tuple[PromptFile, ...]]:
    """The prompt files of `uris` (files or directories, local or s3://) and their filesystem,
    numbered across files in order; one streaming pass counts each file's prompts."""
    files, first, fs = [], 0, None
    for uri, fs, path in on_one_filesystem(uris, "prompt files"):
        try:
            paths = files_under(fs, path)
            if paths is None:
                raise UsageError(f"cannot read prompts {uri}: no such file or directory")
            for p in sorted(paths):
                with fs.open(p, "rb") as fh:
                    count, offsets = _count_prompts(fh)
                files.append(PromptFile(p, full_uri(fs, p), first, count, offsets))
                first += count
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read prompts {uri}: {exc}") from None
    if not first:
        raise UsageError(f"prompts file {' '.join(uris)} has no prompts")
    return fs, tuple(files)


@dataclass(frozen=True)
class Prompts:
    """A score run's prompts, numbered from 0: the files' (read by Ray Data in runs of
    prompts), then `items` (templates and reference prompts, made in the driver)."""

    files: tuple[PromptFile, ...] = ()
    items: tuple[str, ...] = ()
    fs: object = None

    def __len__(self) -> int:
        return sum(f.count for f in self.files) + len(self.items)

    def fingerprints(self) -> list[dict]:
        """What identifies these prompts: each file's uri, size and mtime, and a hash of the
        prompts made in the driver."""
        out = []
        for f in self.files:
            info = self.fs.info(f.path)
            mtime = info.get("mtime") or info.get("LastModified")
            out.append({"uri": f.uri, "size": info["size"], **({"mtime": str(mtime)} if mtime else {})})
        if self.items:
            digest = hashlib.sha256("\n".join(self.items).encode()).hexdigest()[:16]
            out.append({"uri": "(templates or reference prompts)", "size": len(self.items), "sha256": digest})
        return out

    def dataset(self, blocks: int = 1) -> ray.data.Dataset:
        """Rows of `prompt` and `prompt_index`, in at least `blocks` blocks where there are
        prompts enough (one per actor), and at most `PROMPTS_PER_PIECE` prompts a block (more
        beyond `MAX_PROMPT_BLOCKS` blocks)."""
        per, first = _per_piece(len(self), blocks), sum(f.count for f in self.files)
        # reading text is light: zero-CPU tasks never wait for the CPUs the scoring actors hold
        # (a read lost with its node is redone while they run)
        reads = {"num_cpus": 0, "concurrency": max(1, int(ray.cluster_resources().get("CPU", 1)))}
        parts = [ray.data.read_datasource(PromptDatasource(self.fs, self.files, per), **reads)] if self.files else []
        if self.items:
            table = pa.table([list(self.items), range(first, first + len(self.items))], schema=PROMPT_SCHEMA)
            parts.append(ray.data.from_arrow([table.slice(i, per) for i in range(0, len(table), per)]))
        return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def expand_templates(uri: str) -> list[str]:
    """Templates like `{brand} {product} are very [MASK].`, one per line, over the word lists.

    A line may use {brand} and {product}; the lists are the defaults unless the file is
    YAML with `templates:`, `brands:` and `products:`.
    """
    text = _read_text(uri, "templates")
    spec = yaml.safe_load(text) if uri.endswith((".yaml", ".yml")) else None
    if isinstance(spec, dict):
        templates = spec.get("templates")
        brands, products = spec.get("brands", wordlists.BRANDS), spec.get("products", wordlists.PRODUCTS)
    else:
        templates, brands, products = read_prompts(uri), wordlists.BRANDS, wordlists.PRODUCTS
    if not templates:
        raise UsageError(f"templates file {uri} has no templates")
    out = []
    for template in templates:
        for brand, product in itertools.product(brands, products):
            prompt = template.replace("{brand}", brand).replace("{product}", product)
            if prompt not in out:
                out.append(prompt)
    return out


def gather_prompts(prompts: list[str] | None, templates: str | None, corpus: bool) -> Prompts:
    """The prompts of a score run: files and templates, else the five reference prompts."""
    fs, files = prompt_files(prompts) if prompts else (None, ())
    items = expand_templates(templates) if templates else []
    if not files and not items and not corpus:
        items = list(REFERENCE_PROMPTS)
    return Prompts(files, tuple(items), fs)


def load_word_sets(uri: str | None) -> dict[str, list[str]]:
    """`wanted` and `unwanted` words from YAML (default: the filter job's lists)."""
    sets = {"wanted": list(wordlists.WANTED), "unwanted": list(wordlists.UNWANTED)}
    if uri:
        data = yaml.safe_load(_read_text(uri, "word sets"))
        if not isinstance(data, dict) or not set(data) & set(sets) or set(data) - set(sets):
            raise UsageError(f"word sets file {uri} must be a mapping with wanted: and/or unwanted: lists")
        for key, value in data.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"word sets file {uri}: {key} must be a list of words")
            sets[key] = [v.lower() for v in value]
    return sets
