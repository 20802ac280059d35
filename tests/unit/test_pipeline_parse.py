"""Parsing pipelines: multi-document task YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from skyjobs.exceptions import SpecError
from skyjobs.pipeline import load_pipeline

TASK = "resources: {{cloud: local, cpus: 2}}\nrun: echo {n}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_a_name_document_then_tasks_is_a_named_pipeline(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, "name: nightly\n---\n" + TASK.format(n=1) + "---\n"
                            + TASK.format(n=2) + "---\n"))
    assert p.name == "nightly" and p.is_pipeline
    assert [t.run for t in p.tasks] == ["echo 1", "echo 2"]


def test_one_document_is_a_plain_job(tmp_path: Path) -> None:
    p = load_pipeline(write(tmp_path, "name: solo\n" + TASK.format(n=1)))
    assert not p.is_pipeline and p.name is None and p.tasks[0].name == "solo"


@pytest.mark.parametrize(("text", "fragment"), [
    ("name: x\n---\n" + TASK.format(n=1) + "---\nresources: {cloud: local}\nrunn: x\n",
     "(task 2 of 2): runn: is not a supported key"),
    ("name: [1]\n---\n" + TASK.format(n=1) + "---\n" + TASK.format(n=2),
     "the pipeline's name must be a short string"),
    ("---\n---\n", "no task in the file"),
    (("---\n" + TASK.format(n=1)) * 70, "more than 64 tasks"),
    ("a: [\n---\n", "invalid YAML"),
])
def test_a_bad_pipeline_is_one_line_naming_the_task(tmp_path: Path, text: str,
                                                     fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        load_pipeline(write(tmp_path, text))
    assert fragment in str(err.value) and "\n" not in str(err.value)
