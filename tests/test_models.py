"""Model references: the offline starter is a faithful conversion; bad references exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reviewlm.errors import UsageError
from reviewlm.models import _minilm_dir, resolve_model


def test_starter_encoder_equals_the_original_minilm():
    from transformers import AutoModel, AutoTokenizer, DistilBertForMaskedLM

    path = resolve_model("starter")
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(["Nike shoes are very comfortable.", "under armour hoodies"], padding=True, return_tensors="pt")
    assert tok.vocab_size == 30522 and tok.convert_tokens_to_ids("comfortable") == 6625
    assert tok.mask_token_id == 103
    bert = AutoModel.from_pretrained(str(_minilm_dir())).eval()
    ours = DistilBertForMaskedLM.from_pretrained(path).eval()
    with torch.inference_mode():
        want = bert(**ids).last_hidden_state
        got = ours.distilbert(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    assert (want - got).abs().max().item() < 1e-4
    assert ours.vocab_projector.weight.data_ptr() == ours.distilbert.embeddings.word_embeddings.weight.data_ptr()
    assert resolve_model("starter") == path  # built once, then reused


def test_tiny_is_small_and_loads_in_a_fill_mask_pipeline():
    from transformers import pipeline

    fill = pipeline("fill-mask", model=resolve_model("tiny"))
    out = fill("Nike shoes are very [MASK].", top_k=3)
    assert len(out) == 3 and all(0 <= o["score"] <= 1 for o in out)
    assert sum(p.numel() for p in fill.model.parameters()) < 5_000_000


def test_a_model_another_process_built_first_is_kept_not_replaced(tmp_path, monkeypatch):
    """Two training workers of a node build `tiny` at once: the second must not remove the
    first one's copy, which the first may be loading (a worker once read it half-removed)."""
    from reviewlm.models import build_tiny

    monkeypatch.setenv("REVIEWLM_CACHE", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"tiny.tmp{int(dead.stdout)}").mkdir()  # a process killed while it built
    (tmp_path / f"tiny.tmp{os.getpid()}x").mkdir()  # not one of ours
    first = Path(resolve_model("tiny"))
    before = {p.name: p.stat().st_ino for p in first.iterdir()}
    build_tiny(first)  # the slower process finishes its own build
    assert {p.name: p.stat().st_ino for p in first.iterdir()} == before  # the very same files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", f"tiny.tmp{os.getpid()}x"]  # copies dropped
    (tmp_path / "tiny" / "config.json").unlink()  # a leftover that is not a model is replaced
    assert (Path(resolve_model("tiny")) / "config.json").exists()


@pytest.mark.parametrize("ref, message", [
    ("./no/such/dir", "does not exist"),
    ("no-such-org/no-such-model-xyz", "cannot load model"),
])
def test_bad_model_references(ref, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match=message):
        resolve_model(ref)


def test_model_dir_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UsageError, match="no .safetensors weights"):
        resolve_model(str(tmp_path))
