"""skyjobs.Task / skyjobs.Resources produce exactly what the equivalent task YAML produces.

Each case is written twice by hand, once as YAML and once with the builders, and both go
through the same path a submit takes: the task spec (``skyjobs.spec``: what the controller
stores and runs) and the submit body (``skyjobs.sdk.submission``: what is sent, workdir
archive included).
"""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

import skyjobs
from skyjobs import sdk
from skyjobs.exceptions import SpecError
from skyjobs.sdk import Resources, Task
from skyjobs.spec import load_task, parse_task
from skyjobs.submission import raw_task

CASES: list[tuple[str, str, Any]] = [
    ("minimal", "run: echo hi\n", lambda: Task(run="echo hi")),
    ("train", """\
name: train
workdir: .
num_nodes: 2
resources:
  cloud: aws
  region: us-east-1
  accelerators: A100:8
  use_spot: true
  disk_size: 200
  job_recovery:
    strategy: FAILOVER
    max_restarts_on_errors: 3
envs:
  EPOCHS: 10
  MODEL: llama
secrets:
  HF_TOKEN: null
setup: pip install -r requirements.txt
run: |
  python train.py --epochs $EPOCHS
""", lambda: Task(
        name="train", workdir=".", num_nodes=2, envs={"EPOCHS": 10, "MODEL": "llama"},
        secrets={"HF_TOKEN": None}, setup="pip install -r requirements.txt",
        run="python train.py --epochs $EPOCHS\n",
    ).set_resources(Resources(cloud="aws", region="us-east-1", accelerators="A100:8",
                              use_spot=True, disk_size=200,
                              job_recovery={"strategy": "FAILOVER",
                                            "max_restarts_on_errors": 3}))),
    ("any_of", """\
resources:
  job_recovery: EAGER_NEXT_REGION
  any_of:
    - {cloud: aws, accelerators: {A100: 8}, use_spot: true}
    - {cloud: gcp, accelerators: {A100: 8}, use_spot: true}
run: x
""", lambda: Task(run="x").set_resources({
        Resources(cloud="aws", accelerators={"A100": 8}, use_spot=True,
                  job_recovery="EAGER_NEXT_REGION"),
        Resources(cloud="gcp", accelerators={"A100": 8}, use_spot=True,
                  job_recovery="EAGER_NEXT_REGION")})),
    ("ordered", """\
resources:
  ordered:
    - {cloud: local, zone: local-a, cpus: 2, use_spot: true}
    - {cloud: local, cpus: 2, use_spot: false}
run: x
""", lambda: Task(run="x").set_resources([
        Resources(cloud="local", zone="local-a", cpus=2, use_spot=True),
        Resources(cloud="local", cpus=2, use_spot=False)])),
    ("mounts", """\
name: mounts
file_mounts:
  /data/config.yaml: ./config.yaml
  ~/ckpt:
    source: local://ckpts/run1
    mode: MOUNT
resources: {cloud: local, cpus: 2, instance_type: local-2cpu, ports: [8080, "9000-9010"],
            labels: {team: ml}}
run: ls /data
""", lambda: Task(name="mounts", run="ls /data").set_file_mounts({
        "/data/config.yaml": "./config.yaml",
        "~/ckpt": {"source": "local://ckpts/run1", "mode": "MOUNT"},
    }).set_resources(Resources(cloud="local", cpus=2, instance_type="local-2cpu",
                               ports=[8080, "9000-9010"], labels={"team": "ml"}))),
    ("infra", """\
resources: {infra: aws/us-west-2, memory: 32+, disk_tier: high}
run: x
""", lambda: Task(run="x").set_resources(Resources(infra="aws/us-west-2", memory="32+",
                                                   disk_tier="high"))),
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory (workdir and a local file to mount), also the current one: a
    Task's relative paths are from the current directory, a YAML's from its own."""
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / "config.yaml").write_text("lr: 0.1\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _archive_files(encoded: str | None) -> dict[str, bytes]:
    # Compare what is inside: gzip headers carry the time they were written.
    if encoded is None:
        return {}
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(encoded)), mode="r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
                for m in tar.getmembers()}


@pytest.mark.parametrize(("label", "text", "build"), CASES, ids=[c[0] for c in CASES])
def test_a_built_task_is_its_yaml(project: Path, label: str, text: str, build: Any) -> None:
    path = project / f"{label}.yaml"
    path.write_text(text)
    task = build()
    # The documents themselves, key for key.
    assert task.to_yaml_config() == yaml.safe_load(text)
    # What the controller stores and runs.
    from_yaml = load_task(path)
    from_builder = parse_task(task.to_yaml_config(), base_dir=Path.cwd())
    assert from_builder.stored() == from_yaml.stored()
    # What a submit sends.
    body_yaml = sdk.submission(*sdk.load(path), env={"MODEL": "mistral"} if label == "train"
                               else None)
    body_task = sdk.submission(*sdk.load(task), env={"MODEL": "mistral"} if label == "train"
                               else None)
    assert _archive_files(body_task.pop("archive")) == _archive_files(body_yaml.pop("archive"))
    assert body_task.pop("source") == (task.name or "task")
    assert body_yaml.pop("source") == str(path)
    assert body_task == body_yaml


def test_a_task_from_yaml_submits_the_same(project: Path) -> None:
    path = project / "train.yaml"
    path.write_text(CASES[1][1])
    task = Task.from_yaml(path)
    assert task.name == "train" and task.num_nodes == 2
    body = sdk.submission(*sdk.load(task))
    assert body["task"] == raw_task(yaml.safe_load(CASES[1][1]))
    assert set(_archive_files(body["archive"])) >= {"workdir/train.py"}


def test_builders_chain_and_update_as_skypilot_does(project: Path) -> None:
    task = Task("t", run="x", envs={"A": "1"})
    assert task.update_envs({"B": "2"}) is task
    assert task.update_file_mounts({"/c": "./config.yaml"}) is task
    assert task.to_yaml_config() == {"name": "t", "envs": {"A": "1", "B": "2"},
                                     "file_mounts": {"/c": "./config.yaml"}, "run": "x"}
    spot = Resources(cloud="aws", use_spot=True)
    assert spot.copy(use_spot=False).to_yaml_config() == {"cloud": "aws", "use_spot": False}
    assert spot == Resources(cloud="aws", use_spot=True) and len({spot, spot.copy()}) == 1


def test_alternatives_with_different_recoveries_are_refused() -> None:
    task = Task(run="x").set_resources([Resources(cloud="aws", job_recovery="FAILOVER"),
                                        Resources(cloud="gcp")])
    with pytest.raises(SpecError, match="job_recovery"):
        task.to_yaml_config()


@pytest.mark.parametrize(("task", "fragment"), [
    (Task(run="x", num_nodes=0), "num_nodes"),
    (Task(run="x").set_resources(Resources(accelerators="V100:inf")), "count must be"),
    (Task(run="x", workdir="/no/such/dir"), "workdir"),
])
def test_a_bad_built_task_fails_as_its_yaml_would(project: Path, task: Task,
                                                  fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        sdk.load(task)


def test_the_builders_are_the_packages_public_names() -> None:
    assert (skyjobs.Task, skyjobs.Resources) == (Task, Resources)
