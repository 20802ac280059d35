"""SkyPilot task YAML compatibility: every key ``sky jobs launch`` takes is accepted with its
SkyPilot meaning, or refused with one line naming the key, why, and what to use instead."""

from __future__ import annotations

import json
from typing import Any

import pytest

from skyjobs.exceptions import SpecError
from skyjobs.spec import TaskSpec, parse_task, parse_yaml


def parse(text: str) -> TaskSpec:
    return parse_task(parse_yaml(text, "task.yaml"), source="task.yaml")


def refused(text: str) -> str:
    with pytest.raises(SpecError) as err:
        parse(text)
    message = str(err.value)
    assert message.startswith("task.yaml: ") and "\n" not in message
    return message


def round_trips(spec: TaskSpec) -> TaskSpec:
    again = TaskSpec.model_validate(json.loads(json.dumps(spec.stored())))
    assert again == spec
    return again


# --- accepted, with SkyPilot's meaning -----------------------------------------------------


def test_gpus_is_the_short_form_of_accelerators() -> None:
    r = parse("resources: {gpus: 'H100:8'}\nrun: x").resources
    assert [(a.name, a.count) for a in r.accelerators] == [("H100", 8)]
    assert parse("resources: {gpus: {A100: 2}}").resources.accelerators[0].count == 2
    alt = parse("resources: {any_of: [{gpus: L4}, {gpus: 'A10G:1'}]}").resources.choices()
    assert [str(c.accelerators[0]) for c in alt] == ["L4:1", "A10G:1"]


def test_spot_recovery_is_the_old_name_of_job_recovery_with_a_note() -> None:
    spec = parse("resources: {use_spot: true, spot_recovery: FAILOVER}")
    assert spec.resources.job_recovery.strategy == "FAILOVER"
    assert spec.warnings == ("resources.spot_recovery: deprecated, use job_recovery",)
    assert spec.notes("task.yaml") == [
        "task.yaml: resources.spot_recovery: deprecated, use job_recovery"]
    mapping = parse("resources: {spot_recovery: {strategy: eager_next_region, "
                    "max_restarts_on_errors: 3}}").resources.job_recovery
    assert (mapping.strategy, mapping.max_restarts_on_errors) == ("EAGER_NEXT_REGION", 3)
    # "auto", as published YAMLs write it: the default choice.
    auto = parse("resources: {spot_recovery: auto}").resources
    assert auto.job_recovery.strategy is None and auto.strategy == "COST_AWARE"


def test_notes_survive_the_store_and_env_overrides() -> None:
    spec = parse("resources: {spot_recovery: auto, autostop: 10}\nsecrets: {T: null}")
    assert len(spec.warnings) == 2
    assert round_trips(spec).warnings == spec.warnings
    assert spec.stored()["_warnings"] == list(spec.warnings)
    assert spec.with_env_overrides({"T": "x"}).warnings == spec.warnings
    assert parse("run: x").warnings == ()


def test_disk_size_is_whole_gb() -> None:
    assert parse("resources: {disk_size: 500}").resources.disk_size == 500
    assert parse("resources: {disk_size: 500GB}").resources.disk_size == 500
    assert parse("resources: {disk_size: '1TB'}").resources.disk_size == 1024
    assert parse("resources: {disk_size: '256'}").resources.disk_size == 256


def test_disk_tier() -> None:
    for tier in ("low", "medium", "high", "ultra", "best"):
        assert parse(f"resources: {{disk_tier: {tier.upper()}}}").resources.disk_tier == tier


def test_image_id_one_or_per_region() -> None:
    one = parse("resources: {cloud: aws, image_id: ami-0123}").resources
    assert one.image_id == "ami-0123" and one.image_for("eu-west-1") == "ami-0123"
    per = parse("resources:\n  cloud: aws\n  image_id:\n    us-east-1: ami-1\n"
                "    us-west-2: ami-2\n").resources
    assert per.image_id == {"us-east-1": "ami-1", "us-west-2": "ami-2"}
    assert per.image_for("us-west-2") == "ami-2" and per.image_for("eu-west-1") is None
    # per alternative, each with its own cloud
    alt = parse("resources:\n  any_of:\n    - {cloud: aws, image_id: {us-east-1: ami-1}}\n"
                "    - {cloud: gcp, image_id: projects/p/global/images/i}\n").resources
    assert [c.image_for("us-east-1") for c in alt.choices()] == [
        "ami-1", "projects/p/global/images/i"]


def test_labels_become_tags() -> None:
    r = parse("resources: {labels: {team: ml, project: llama-3, run: 7, empty: ''}}").resources
    assert r.labels == {"team": "ml", "project": "llama-3", "run": "7", "empty": ""}


def test_ports_single_ranges_and_lists() -> None:
    assert parse("resources: {ports: 8080}").resources.ports == ("8080",)
    assert parse("resources: {ports: '8080'}").resources.ports == ("8080",)
    assert parse("resources: {ports: 10000-10010}").resources.ports == ("10000-10010",)
    assert parse("resources: {ports: [22, '8000-8001', 22, '9000-9000']}").resources.ports == (
        "22", "8000-8001", "9000")


def test_accelerator_args_accepted_noted_unless_tpu() -> None:
    tpu = parse("resources: {accelerators: tpu-v4-8, accelerator_args: "
                "{runtime_version: tpu-vm-base, tpu_vm: true}}")
    args = tpu.resources.accelerator_args
    assert args is not None and (args.runtime_version, args.tpu_vm) == ("tpu-vm-base", True)
    assert tpu.warnings == ()
    gpu = parse("resources: {accelerators: A100, accelerator_args: {tpu_vm: true}}")
    assert gpu.warnings == ("resources.accelerator_args: ignored: it is meaningful only for "
                            "TPUs",)


def test_any_of_and_ordered_carry_the_new_fields() -> None:
    r = parse("resources:\n  disk_size: 100\n  labels: {team: a}\n  ordered:\n"
              "    - {zone: z1}\n    - {zone: z2, disk_size: 200, labels: {team: b}}\n").resources
    assert [(c.zone, c.disk_size, c.labels) for c in r.choices()] == [
        ("z1", 100, {"team": "a"}), ("z2", 200, {"team": "b"})]


def test_envs_and_secrets() -> None:
    spec = parse("envs: {LR: 0.1, HF_TOKEN: null}\nsecrets: {WANDB_API_KEY: null}")
    assert spec.envs == {"LR": "0.1", "HF_TOKEN": None}
    assert spec.missing_values() == ["HF_TOKEN", "WANDB_API_KEY"]


def test_autostop_and_standard_network_tier_are_ignored() -> None:
    spec = parse("resources: {autostop: {idle_minutes: 10, down: true}, "
                 "network_tier: standard}")
    assert spec.warnings == ("resources.autostop: ignored: a managed job's instances are "
                             "terminated when it ends",)
    assert "autostop" not in spec.stored()["resources"]
    alt = parse("resources: {any_of: [{autostop: false}, {autostop: 5}]}")
    assert alt.warnings == ("resources.any_of.0.autostop: ignored: a managed job's instances "
                            "are terminated when it ends",)


def test_config_kubernetes_and_ssh_are_ignored_empty_volumes_accepted() -> None:
    spec = parse("config: {kubernetes: {pod_config: {}}, ssh: {}}\nvolumes: {}")
    assert spec.warnings == (
        "config.kubernetes: ignored: skyjobs does not place jobs on Kubernetes",
        "config.ssh: ignored: skyjobs does not place jobs on SSH node pools")
    assert parse("config: {}\nvolumes: null\nrun: x").warnings == ()
    assert parse("inputs: {s3://b: 100}").warnings == (
        "inputs: ignored: it is a hint for SkyPilot's optimizer",)


def test_max_duration_hours() -> None:
    jr = parse("resources: {job_recovery: {max_duration_hours: 12.5}}").resources.job_recovery
    assert jr.max_duration_hours == 12.5
    assert parse("run: x").resources.job_recovery.max_duration_hours is None


# --- refused, with the key and the reason in one line --------------------------------------


@pytest.mark.parametrize(("text", "line"), [
    ("resources: {gpus: 'H100:8', accelerators: 'H100:8'}",
     "resources.gpus: is the short form of accelerators; give one of them, not both"),
    ("resources: {gpus: 'H100:0'}", "resources.gpus: H100:0: count must be a whole number"),
    ("resources: {spot_recovery: auto, job_recovery: FAILOVER}",
     "resources.spot_recovery: is the old name of job_recovery; give only job_recovery"),
    ("resources: {spot_recovery: {strategy: SOMETIMES}}",
     "resources.spot_recovery.strategy: unknown strategy 'SOMETIMES'"),
    ("resources: {disk_size: 0}", "resources.disk_size: 0 is not a whole number of GB"),
    ("resources: {disk_size: 100000}", "resources.disk_size: 100000 is not a whole number of GB"),
    ("resources: {disk_size: 500MB}", "resources.disk_size: '500MB' is not a size like"),
    ("resources: {disk_size: true}", "resources.disk_size: True is not a whole number of GB"),
    ("resources: {disk_tier: fast}", "resources.disk_tier: 'fast' is not a disk tier"),
    ("resources: {image_id: {us-east-1: ami-1}}",
     "resources.image_id: a region -> image id mapping needs cloud"),
    ("resources: {cloud: aws, region: eu-west-1, image_id: {us-east-1: ami-1}}",
     "resources.image_id: has no image for region 'eu-west-1'"),
    ("resources: {image_id: 'docker:ubuntu:22.04'}",
     "resources.image_id: docker images are not supported"),
    ("resources: {image_id: 'skypilot:gpu-ubuntu-2204'}",
     "resources.image_id: SkyPilot image tags are not supported"),
    ("resources: {image_id: [ami-1]}", "resources.image_id: must be an image id, or a mapping"),
    ("resources: {labels: {Team: ml}}", "resources.labels.Team: a label key must be 1-63 "
                                        "lowercase letters"),
    ("resources: {labels: {team: ML Ops}}", "resources.labels.team: a label value must be"),
    ("resources: {labels: {skyjobs-job: x}}", "resources.labels.skyjobs-job: keys starting "
                                              "with skyjobs or goog are reserved"),
    ("resources: {labels: [a]}", "resources.labels: must be a mapping of key: value"),
    ("resources: {ports: 0}", "resources.ports: 0: ports are 1 to 65535"),
    ("resources: {ports: '9000-8000'}", "resources.ports: '9000-8000': ports are 1 to 65535"),
    ("resources: {ports: http}", "resources.ports: 'http' is not a port like 8080"),
    ("resources: {accelerator_args: {tpu_type: v4}}",
     "resources.accelerator_args.tpu_type: is not a supported key"),
    ("event_callback: echo done",
     "event_callback: not supported: it would run user shell on the controller; use webhooks "
     "(docs/operations.md)"),
    ("service: {readiness_probe: /}", "service: serving is not a managed job; use SkyServe"),
    ("pool: {workers: 2}", "pool: worker pools are not supported"),
    ("config: {docker: {run_options: [--ipc=host]}}",
     "config.docker: is not supported: skyjobs runs the task on the VM, not in a container"),
    ("config: {aws: {vpc_name: x}}", "config.aws: per-task cloud settings are not supported"),
    ("config: {nvidia_gpus: {disable_ecc: true}}", "config.nvidia_gpus: is not supported"),
    ("config: [docker]", "config: must be a mapping of SkyPilot config overrides"),
    ("volumes: {/mnt/data: my-volume}",
     "volumes: not supported: skyjobs has no persistent volumes; use a bucket in file_mounts"),
    ("resources: {volumes: [{path: /data}]}", "resources.volumes: disk volumes are not "
                                              "supported"),
    ("resources: {autostop: [1]}", "resources.autostop: must be true/false, idle minutes"),
    ("resources: {network_tier: best}", "resources.network_tier: best is not supported"),
    ("resources: {network_tier: fastest}", "resources.network_tier: must be standard or best"),
    ("resources: {max_hourly_cost: 3}", "resources.max_hourly_cost: is not supported"),
    ("resources: {priority: 5}", "resources.priority: job priorities are not supported"),
    ("resources: {any_of: [{job_recovery: FAILOVER}]}",
     "resources.any_of.0.job_recovery: applies to the whole job; give it once, at the "
     "resources level"),
    ("resources: {ordered: [{ordered: [{}]}]}", "resources.ordered.0.ordered: alternatives "
                                                "cannot be nested"),
    ("resources: {_docker_login_config: {}}",
     "resources._docker_login_config: is internal to SkyPilot"),
    ("_metadata: {}", "_metadata: is internal to SkyPilot"),
    ("_warnings: [hi]", "_warnings: is internal to skyjobs"),
    ("resources: {cloud: [gcp, aws]}",
     "resources.cloud: a list is not supported here; give alternatives under any_of"),
    ("secrets: [WANDB_API_KEY]", "secrets: a list of managed secret names is not supported"),
    ("workdir: {url: 'https://github.com/x/y', ref: main}",
     "workdir: a git repository (url/ref) is not supported"),
    ("file_mounts: {/d: {name: my-bucket, source: s3://b}}",
     "file_mounts./d.name: creating a bucket from a local source is not supported"),
    ("file_mounts: {/d: {source: s3://b, store: s3}}",
     "file_mounts./d.store: is implied by the source's scheme"),
    ("resources: {job_recovery: {max_duration_hours: 0}}",
     "resources.job_recovery.max_duration_hours: Input should be greater than 0"),
    ("resources: {job_recovery: {max_duration_hours: .inf}}",
     "resources.job_recovery.max_duration_hours: "),
    ("resources: {job_recovery: {max_duration_hours: 2, expected_runtime_hours: 3, "
     "deadline_hours: 5}}", "expected_runtime_hours is longer than max_duration_hours"),
])
def test_refused_with_key_and_reason(text: str, line: str) -> None:
    assert line in refused(text)


@pytest.mark.parametrize(("text", "line"), [
    ("rnu: x", "task.yaml: rnu: is not a supported key; did you mean run?"),
    ("num_node: 2", "task.yaml: num_node: is not a supported key; did you mean num_nodes?"),
    ("resources: {gpu: 'H100:8'}",
     "task.yaml: resources.gpu: is not a supported key; did you mean gpus?"),
    ("resources: {accelerator: V100}",
     "task.yaml: resources.accelerator: is not a supported key; did you mean accelerators?"),
    ("resources: {any_of: [{instancetype: x}]}",
     "task.yaml: resources.any_of.0.instancetype: is not a supported key; did you mean "
     "instance_type?"),
    ("resources: {job_recovery: {max_restarts: 2}}",
     "task.yaml: resources.job_recovery.max_restarts: is not a supported key; did you mean "
     "max_restarts_on_errors?"),
    ("resources: {disksize: 100}",
     "task.yaml: resources.disksize: is not a supported key; did you mean disk_size?"),
    ("file_mounts: {/d: {source: s3://b, mdoe: COPY}}",
     "task.yaml: file_mounts./d.mdoe: is not a supported key; did you mean mode?"),
])
def test_unknown_keys_get_a_suggestion(text: str, line: str) -> None:
    assert refused(text) == line


def test_unknown_key_with_nothing_close_has_no_suggestion() -> None:
    assert refused("resources: {zzzzzz: 1}") == "task.yaml: resources.zzzzzz: is not a " \
                                                "supported key"


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("resources", [
    {"gpus": "H100:8"},
    {"spot_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 1}},
    {"disk_size": "2TB"},
    {"disk_tier": "Ultra"},
    {"cloud": "aws", "image_id": {"us-east-1": "ami-1", "us-west-2": "ami-2"}},
    {"image_id": "ami-1"},
    {"labels": {"team": "ml", "n": 3}},
    {"ports": [8080, "10000-10010"]},
    {"accelerators": "tpu-v4-8", "accelerator_args": {"runtime_version": "v", "tpu_vm": True}},
    {"accelerators": "A100", "accelerator_args": {"gcp_queued_resource": False}},
    {"autostop": 10, "network_tier": "standard"},
    {"job_recovery": {"max_duration_hours": 0.5}},
    {"ordered": [{"disk_size": 10, "ports": 22, "labels": {"a": "b"}},
                 {"cloud": "aws", "image_id": {"us-east-1": "ami-1"}, "disk_tier": "best"}]},
])
def test_new_fields_round_trip_through_the_store(resources: dict[str, Any]) -> None:
    spec = parse_task({"resources": resources, "run": "x"}, source="task.yaml")
    again = round_trips(spec)
    assert again.resources.choices() == spec.resources.choices()


# --- realistic published SkyPilot task YAMLs -----------------------------------------------

PUBLISHED = {
    "llama_finetune_h100": """
name: llama-3-finetune
resources:
  gpus: H100:8
  use_spot: true
  spot_recovery: auto
  disk_size: 500
workdir: ~/llama-training
file_mounts:
  /checkpoints:
    source: s3://my-llama-checkpoints
    mode: MOUNT
envs:
  MODEL_SIZE: 8B
  HF_TOKEN: null
setup: |
  pip install torch transformers peft
run: |
  torchrun --nproc_per_node=$SKYPILOT_NUM_GPUS_PER_NODE train.py --output /checkpoints
""",
    "vicuna_style_a100": """
name: vicuna-train
resources:
  accelerators: A100-80GB:8
  disk_size: 1000
  disk_tier: best
  use_spot: true
  job_recovery:
    strategy: FAILOVER
    max_restarts_on_errors: 3
file_mounts:
  /artifacts:
    source: gs://vicuna-artifacts
    mode: MOUNT
setup: |
  conda activate chatbot || conda create -n chatbot python=3.10 -y
run: |
  cd FastChat && torchrun --nnodes=$SKYPILOT_NUM_NODES fastchat/train/train_mem.py
""",
    "vllm_job_with_ports": """
name: vllm-batch
resources:
  accelerators: {L4: 1}
  ports: 8000
  labels:
    team: inference
    project: batch-eval
setup: pip install vllm
run: |
  python -m vllm.entrypoints.openai.api_server --model $MODEL --port 8000 &
  python eval.py --endpoint http://localhost:8000
envs:
  MODEL: mistralai/Mistral-7B-Instruct-v0.2
""",
    "multinode_ddp": """
name: ddp
num_nodes: 2
resources:
  gpus: A100:8
  cpus: 32+
  memory: 256+
  job_recovery:
    max_restarts_on_errors: 2
    recover_on_exit_codes: [33, 34]
run: |
  MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n1)
  torchrun --nnodes=$SKYPILOT_NUM_NODES --node_rank=$SKYPILOT_NODE_RANK \\
    --master_addr=$MASTER_ADDR train.py
""",
    "aws_custom_ami_per_region": """
resources:
  cloud: aws
  accelerators: A10G:1
  image_id:
    us-east-1: ami-0729d913a335efca7
    us-west-2: ami-050814f384259894c
  disk_size: 256
run: nvidia-smi
""",
    "infra_and_any_of": """
name: any-gpu
resources:
  infra: aws/us-east-1
  use_spot: true
  accelerators: [A100:8, H100:8]
  any_of:
    - instance_type: p4d.24xlarge
    - instance_type: p5.48xlarge
run: python train.py
""",
    "ordered_fallback": """
resources:
  ordered:
    - gpus: H100:1
      use_spot: true
    - gpus: A100:1
      use_spot: true
    - gpus: A100:1
      use_spot: false
run: python train.py
""",
    "gcp_tpu": """
name: tpu-train
resources:
  cloud: gcp
  accelerators: tpu-v4-8
  accelerator_args:
    runtime_version: tpu-vm-v4-base
    tpu_vm: true
run: python3 train_tpu.py
""",
    "old_spot_recovery_mapping": """
resources:
  accelerators: V100:1
  use_spot: true
  spot_recovery:
    strategy: EAGER_NEXT_REGION
    max_restarts_on_errors: 1
run: python resnet.py --resume
""",
    "task_config_for_kubernetes": """
resources:
  cloud: aws
  gpus: L4:1
config:
  kubernetes:
    pod_config:
      spec:
        runtimeClassName: nvidia
run: python app.py
""",
    "autostop_and_labels": """
name: notebook-job
resources:
  cpus: 8+
  memory: 32+
  disk_tier: medium
  autostop: 30
  network_tier: standard
  labels:
    owner: alice
    cost-center: research
run: jupyter nbconvert --execute analysis.ipynb
""",
    "secrets_and_buckets": """
name: sweep
workdir: .
resources:
  accelerators: {T4: 1}
  use_spot: true
  ports: [8888, 6006-6010]
file_mounts:
  /data:
    source: s3://public-datasets/imagenet
    mode: COPY
  ~/.config/app.json: ./app.json
envs:
  EPOCHS: 10
secrets:
  WANDB_API_KEY: null
run: python sweep.py --epochs $EPOCHS
""",
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_skypilot_yaml_parses(name: str) -> None:
    spec = parse_task(parse_yaml(PUBLISHED[name], f"{name}.yaml"), source=f"{name}.yaml")
    round_trips(spec)
    assert spec.resources.choices()


def test_published_yaml_meanings() -> None:
    def get(name: str) -> TaskSpec:
        return parse_task(parse_yaml(PUBLISHED[name], name), source=name)

    llama = get("llama_finetune_h100")
    assert str(llama.resources.accelerators[0]) == "H100:8"
    assert llama.resources.disk_size == 500 and llama.workdir == "~/llama-training"
    assert llama.notes("llama.yaml") == [
        "llama.yaml: resources.spot_recovery: deprecated, use job_recovery"]
    assert get("vllm_job_with_ports").resources.ports == ("8000",)
    assert get("aws_custom_ami_per_region").resources.image_for("us-west-2") == (
        "ami-050814f384259894c")
    assert get("old_spot_recovery_mapping").resources.strategy == "EAGER_NEXT_REGION"
    assert [c.accelerators[0].name for c in get("ordered_fallback").resources.choices()] == [
        "H100", "A100", "A100"]
    assert get("secrets_and_buckets").resources.ports == ("8888", "6006-6010")
    assert get("autostop_and_labels").resources.labels == {
        "owner": "alice", "cost-center": "research"}
