"""Pipelines: one managed job whose tasks run in order (a multi-document task YAML).

As in SkyPilot: documents separated by ``---``; a first document with only ``name:`` names
the pipeline. Each task gets its own placement and is recovered on its own; a task that
fails fails the job and the rest are skipped. A file with one task is a plain job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyjobs.exceptions import SpecError
from skyjobs.spec import TaskSpec, parse_task, parse_yaml_documents, read_task_text


@dataclass(frozen=True)
class Pipeline:
    name: str | None  # from the name-only first document
    tasks: tuple[TaskSpec, ...]
    documents: tuple[Any, ...]  # each task's YAML document, as loaded

    @property
    def is_pipeline(self) -> bool:
        return len(self.tasks) > 1


def task_source(source: str, index: int, count: int) -> str:
    """How errors name a task: the file, and the task's place in a pipeline."""
    return f"{source} (task {index + 1} of {count})" if count > 1 else source


def pipeline_from_documents(docs: list[Any], source: str = "task",
                            base_dir: Path | None = None,
                            path_problems: list[str] | None = None) -> Pipeline:
    docs = [d for d in docs if d is not None]  # a stray '---' at the end, or at the start
    name = None
    if len(docs) > 1 and isinstance(docs[0], dict) and set(docs[0]) == {"name"}:
        raw = docs.pop(0)["name"]
        if not isinstance(raw, str) or not raw.strip() or len(raw) > 256:
            raise SpecError(f"{source}: name: the pipeline's name must be a short string")
        name = raw.strip()
    if not docs:
        raise SpecError(f"{source}: no task in the file")
    tasks = tuple(parse_task(d, source=task_source(source, i, len(docs)), base_dir=base_dir,
                             path_problems=path_problems) for i, d in enumerate(docs))
    return Pipeline(name, tasks, tuple(docs))


def load_pipeline(path: str | Path, path_problems: list[str] | None = None) -> Pipeline:
    """A task file with one task or several; every problem is one SpecError line."""
    p = Path(path)
    docs = parse_yaml_documents(read_task_text(p), str(p))
    try:
        base_dir = p.resolve().parent
    except (OSError, RuntimeError) as err:
        raise SpecError(f"{p}: cannot resolve its directory: {err}") from None
    return pipeline_from_documents(docs, str(p), base_dir, path_problems)
