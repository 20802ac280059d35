from __future__ import annotations

from pathlib import Path

import pytest

from skyjobs.exceptions import SpecError
from skyjobs.spec import TaskSpec, load_task, parse_task


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "task.yaml"
    p.write_text(text)
    return p


def test_full_skypilot_task_parses(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    spec = load_task(write(tmp_path, """
name: train
resources:
  accelerators: {V100: 1}
  cpus: 4+
  memory: 16
  use_spot: true
  job_recovery:
    strategy: eager_next_region
    max_restarts_on_errors: 2
    recover_on_exit_codes: 33
  ordered:
    - zone: local-b
    - infra: local/local/local-a
      use_spot: false
num_nodes: 2
workdir: ./src
file_mounts:
  /ckpt: {source: local://bucket/run1, mode: copy}
setup: pip install nothing
run: python train.py
envs: {LR: 0.1, DEBUG: true}
secrets: {TOKEN: null}
"""))
    r = spec.resources
    assert r.strategy == "EAGER_NEXT_REGION"
    assert r.job_recovery.recover_on_exit_codes == (33,)
    assert [str(a) for a in r.accelerators] == ["V100:1"]
    assert r.cpus is not None and r.cpus.admits(8) and not r.cpus.admits(2)
    assert r.memory is not None and r.memory.admits(16) and not r.memory.admits(32)
    choices = r.choices()
    assert [c.zone for c in choices] == ["local-b", "local-a"]
    assert choices[1].use_spot is False and choices[0].use_spot is True
    assert choices[1].cloud == "local" and choices[1].accelerators == r.accelerators
    assert spec.workdir == str((tmp_path / "src").resolve())
    assert spec.buckets()["/ckpt"].mode == "COPY"
    assert spec.envs == {"LR": "0.1", "DEBUG": "true"}
    assert spec.missing_values() == ["TOKEN"]
    assert spec.with_env_overrides({"TOKEN": "x"}).secrets == {"TOKEN": "x"}


def test_json_round_trip_is_lossless(tmp_path: Path) -> None:
    spec = parse_task({"resources": {"accelerators": ["A100:8", "H100:8"], "cpus": "8+",
                                     "any_of": [{"cloud": "aws"}, {"cloud": "gcp"}]},
                       "run": "x"})
    again = TaskSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec


@pytest.mark.parametrize(("text", "message"), [
    ("resources: {gpuz: 1}", "resources.gpuz: is not a supported key; did you mean gpus?"),
    ("resources: {gpus: 1}", "resources.gpus: 1 is not an accelerator like V100"),
    ("resources: {cpus: lots}", "resources.cpus: 'lots' is not a number"),
    ("num_nodes: 0", "num_nodes: Input should be greater than or equal to 1"),
    ("run: [a]", "run: must be a shell script"),
    ("resources: {job_recovery: SOMETIMES}", "unknown strategy 'SOMETIMES'"),
    ("resources: {accelerators: 'V100:0'}", "count must be a whole number above zero"),
    ("file_mounts: {/a: {source: http://x}}", "file_mounts./a.source: source 'http://x'"),
    ("file_mounts: {rel: /tmp}", "must be an absolute path or start with ~/"),
    ("workdir: ./missing", "workdir: './missing' is not a directory"),
    ("envs: {1BAD: x}", "'1BAD' is not a valid environment variable name"),
    ("resources: {any_of: [{}], ordered: [{}]}", "use any_of or ordered, not both"),
    ("resources: {job_recovery: {strategy: DEADLINE_AWARE}}", "needs deadline_hours"),
    ("- a list", "the task must be a YAML mapping"),
    ("run: 'unterminated", "invalid YAML at line 1"),
])
def test_bad_task_gives_one_line_naming_file_and_key(tmp_path: Path, text: str,
                                                      message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        load_task(path)
    assert message in str(err.value)
    assert str(err.value).startswith(str(path))
    assert "\n" not in str(err.value)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_task(tmp_path / "nope.yaml")
