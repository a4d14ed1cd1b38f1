"""Credentials never reach outputs or logs; only safetensors load; recipes run no code."""

import re
from pathlib import Path

import pytest
from reviewlm.io.storage import redact
from reviewlm.synth import write_synth

from tests.conftest import run_cli

KEY_ID, SECRET = "AKIAREVIEWLMFAKE0001", "reviewlm/fake+Secret/DoNotLeak"


def test_redact_masks_secret_arguments_and_uri_credentials():
    args = {"inputs": ["s3://AKIA1:s3cr3t@bucket/in", "s3://bucket/b"], "aws_secret": "x", "hf_token": "hf_x",
            "address": "ray://admin:pw@head:10001", "output": "s3://bucket/out", "epochs": 3, "storage_key": None}
    masked = redact(args)
    assert masked["inputs"] == ["s3://***@bucket/in", "s3://bucket/b"] and masked["address"] == "ray://***@head:10001"
    assert masked["aws_secret"] == masked["hf_token"] == "***" and masked["epochs"] == 3
    assert masked["output"] == "s3://bucket/out" and masked["storage_key"] is None


@pytest.mark.slow
def test_no_credentials_in_manifests_reports_or_logs(s3, tmp_path):
    write_synth("s3://reviews/secure/in", 300, seed=1)
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    runs = [run_cli("filter", "s3://reviews/secure/in", "--output", "s3://reviews/secure/filter", "--num-cpus", 2,
                    env=env),
            run_cli("score", "--model", "t=tiny", "--output", tmp_path / "score", "--filter-stats",
                    "s3://reviews/secure/filter/stats.json", "--num-cpus", 2, env=env)]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    written = [s3.cat(p) for p in s3.find("reviews/secure/filter")]
    written += [p.read_bytes() for p in Path(tmp_path / "score").rglob("*") if p.is_file()]
    assert len(written) > 8 and any(b'"arguments"' in w for w in written)
    for blob in written + [(r.stdout + r.stderr).encode() for r in runs]:
        assert KEY_ID.encode() not in blob and SECRET.encode() not in blob


def test_no_remote_code_and_only_safetensors_in_the_package():
    lib = Path(__file__).resolve().parents[1] / "lib" / "reviewlm"
    source = "\n".join(p.read_text() for p in lib.rglob("*.py"))
    assert "trust_remote_code=" not in source
    loads = re.findall(r"torch\.load\(.*", source)
    assert loads and all("weights_only=True" in call for call in loads)  # only our own training state
