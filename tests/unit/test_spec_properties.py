"""Property: the spec parser raises only SpecError (one line) on any YAML text or structure,
and every spec it accepts is stored in a form the runner reads back unchanged."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from skyjobs.exceptions import SpecError
from skyjobs.spec import TaskSpec, parse_task, parse_yaml

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

def _huge() -> int:
    return 10**5000  # built, not listed: hypothesis cannot print it


scalars = (hs.builds(_huge) | hs.none() | hs.booleans() | hs.integers() | hs.floats()
           | hs.text(max_size=12)
           | hs.sampled_from([-(10**30), 2**63, float("inf"), float("nan"), "",
                              "x\x00y", "\ud800", "V100:inf", "V100:1e9", "4+", "1e999",
                              "local", "local/local/local-a", "A100:8", "２", "٣",
                              "DEADLINE_AWARE", "copy", "local://b/p", "s3://", "~/x", "/a",
                              "auto", "500GB", "1TB", "8080", "1-65535", "65536", "ami-1",
                              "docker:x", "best", "standard", "team", "H100:8"]))
json_like = hs.recursive(
    scalars, lambda inner: hs.lists(inner, max_size=4)
    | hs.dictionaries(hs.text(max_size=8) | hs.integers() | hs.none(), inner, max_size=4),
    max_leaves=25)

VALID: dict[str, Any] = {
    "name": "t", "num_nodes": 2, "setup": "pip install x", "run": "python train.py",
    "envs": {"LR": "0.1", "N": 3}, "secrets": {"TOKEN": None},
    "file_mounts": {"/ckpt": {"source": "local://bucket/run", "mode": "copy"}},
    "resources": {"cloud": "local", "cpus": "4+", "memory": 16, "use_spot": True,
                  "accelerators": {"V100": 1}, "ordered": [{"zone": "local-b"}],
                  "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 2,
                                   "recover_on_exit_codes": [33], "max_duration_hours": 72},
                  "disk_size": "500GB", "disk_tier": "high", "ports": [8080, "10000-10010"],
                  "labels": {"team": "ml", "run": "7"}, "image_id": {"local": "img-1"},
                  "accelerator_args": {"tpu_vm": True}, "autostop": 10,
                  "network_tier": "standard"},
}
# The SkyPilot spellings skyjobs reads as its own (gpus, spot_recovery) and ignores (config).
VALID_SKYPILOT: dict[str, Any] = {
    "run": "python train.py", "config": {"kubernetes": {"pod_config": {}}},
    "resources": {"gpus": "H100:8", "spot_recovery": "auto", "use_spot": True,
                  "any_of": [{"cloud": "aws", "image_id": "ami-1"},
                             {"cloud": "gcp", "ports": 22, "autostop": False}]},
}


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@hs.composite
def mutated_tasks(draw: hs.DrawFn) -> Any:
    doc = json.loads(json.dumps(draw(hs.sampled_from([VALID, VALID_SKYPILOT]))))
    for _ in range(draw(hs.integers(1, 4))):
        paths = _paths(doc)[1:]
        if not paths:  # earlier mutations deleted every key: nothing left to mutate
            break
        path = draw(hs.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(hs.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(hs.text(max_size=6) | hs.sampled_from(
                ["zone", "gpus", "A=B", "accelerators", "job_recovery", "spot_recovery",
                 "config", "volumes", "autostop", "_warnings", "image_id", "labels", "ports",
                 "disk_size", "kubernetes", "max_duration_hours", "network_tier"]))] = \
                draw(json_like)
        else:
            parent[path[-1]] = draw(json_like)
        if not isinstance(doc, dict):
            break
    return doc


def _accepted_round_trips(spec: TaskSpec) -> None:
    stored = spec.stored()
    json.dumps(stored)  # what the store writes
    assert TaskSpec.model_validate(json.loads(json.dumps(stored))) == spec


def _check(data: Any) -> None:
    try:
        spec = parse_task(data, source="t.yaml")
    except SpecError as err:
        assert str(err).startswith("t.yaml: ") and "\n" not in str(err)
        return
    _accepted_round_trips(spec)


@SETTINGS
@given(json_like)
def test_any_structure_is_a_spec_or_a_spec_error(data: Any) -> None:
    _check(data)
    _check({"resources": data, "run": "x"})


@SETTINGS
@given(mutated_tasks())
def test_mutated_valid_tasks_are_a_spec_or_a_spec_error(data: Any) -> None:
    _check(data)


@SETTINGS
@given(mutated_tasks())
def test_env_overrides_keep_the_spec_storable(data: Any) -> None:
    try:
        spec = parse_task(data, source="t.yaml")
    except SpecError:
        return
    overrides = {"X": "1", "é": "2"} if isinstance(data.get("run"), str) else {"A": "\x00"}
    try:
        _accepted_round_trips(spec.with_env_overrides(overrides))
    except SpecError as err:
        assert "\n" not in str(err)


def _dump(data: Any) -> str:
    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except ValueError:  # a 5000-digit int cannot be written either
        return "num_nodes: " + "9" * 5000


yaml_texts = (hs.text(max_size=200) | json_like.map(_dump) | mutated_tasks().map(_dump)
              | hs.sampled_from(["a: " + "[" * 5000, "{a: " * 3000, "num_nodes: " + "9" * 5000,
                                 "a: !!binary ====", "a: !!python/object:os.system x",
                                 "a: &a [*a]", "? [a]\n: 1", "<<: 1", "a: 2024-99-99",
                                 "a: !!timestamp x", "a: !!float x", "a: !!set {1}"]))


@SETTINGS
@given(yaml_texts, hs.lists(hs.tuples(hs.integers(0, 300), hs.text(max_size=6)), max_size=3))
def test_any_yaml_text_is_a_spec_or_a_spec_error(text: str,
                                                 edits: list[tuple[int, str]]) -> None:
    for at, insert in edits:
        text = text[:at] + insert + text[at:]
    try:
        data = parse_yaml(text, "t.yaml")
    except SpecError as err:
        assert str(err).startswith("t.yaml: ") and "\n" not in str(err)
        return
    _check(data)


def test_the_seed_documents_are_valid() -> None:
    for doc in (VALID, VALID_SKYPILOT):
        _accepted_round_trips(parse_task(doc, source="t.yaml"))
