"""cluster.yaml against the JSON schema that Ray ships for cluster launcher configs."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema():
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema(schema, config):
    jsonschema.validate(config, schema)


def test_schema_check_catches_a_broken_config(schema, config):
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_cluster_matches_the_pinned_ray_and_keeps_tasks_off_the_head(config):
    major_minor = ".".join(ray.__version__.split(".")[:2])
    images = [config["docker"]["image"]] + [t.get("docker", {}).get("worker_image", "")
                                            for t in config["available_node_types"].values()]
    assert all(f"rayproject/ray:{major_minor}." in i for i in images if i)
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any("gpu" in t.get("docker", {}).get("worker_image", "") for t in config["available_node_types"].values())
    text = (ROOT / "cluster.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text
