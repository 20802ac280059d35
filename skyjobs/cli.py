"""The ``skyjobs`` command line.

Every failure prints one ``error: ...`` line and exits nonzero; no traceback reaches users.
The controller is found from ``--controller`` / ``SKYJOBS_CONTROLLER`` (with ``SKYJOBS_TOKEN``)
or from the state directory (``--state-dir`` / ``SKYJOBS_STATE_DIR``, default ``~/.skyjobs``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from skyjobs import sdk
from skyjobs.client import Client, connect
from skyjobs.config import default_state_dir
from skyjobs.exceptions import ApiError, ControllerUnavailableError, SkyjobsError
from skyjobs.models import Job
from skyjobs.pipeline import load_pipeline, pipeline_from_documents, task_source
from skyjobs.render import event_line, fmt_duration, fmt_time, table
from skyjobs.spec import TaskSpec
from skyjobs.states import TERMINAL
from skyjobs.submission import raw_task


class Ctx:
    def __init__(self, state_dir: Path, controller: str | None) -> None:
        self.state_dir = state_dir
        self.controller = controller

    def client(self, autostart: bool = False) -> Client:
        return connect(self.state_dir, self.controller, autostart=autostart)


pass_ctx = click.make_pass_decorator(Ctx)
RECENT_S = 24 * 3600.0  # queue shows ended jobs this recent unless --all


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="SKYJOBS_STATE_DIR", default=None,
              help="Controller state directory (default ~/.skyjobs).")
@click.option("--controller", envvar="SKYJOBS_CONTROLLER", default=None, metavar="URL",
              help="Controller URL; its token comes from SKYJOBS_TOKEN.")
@click.version_option(package_name="skyjobs")
@click.pass_context
def main(ctx: click.Context, state_dir: Path | None, controller: str | None) -> None:
    """skyjobs: submit once; spot jobs survive preemptions on the cheapest capacity."""
    ctx.obj = Ctx((state_dir or default_state_dir()).expanduser().resolve(), controller)


# --- daemon and agent ------------------------------------------------------------------------

@main.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port (default 8765; 0 picks a free port and keeps it for restarts).")
@click.option("--clouds", default=None, help="Comma-separated providers to enable (default local).")
@pass_ctx
def controller(obj: Ctx, host: str | None, port: int | None, clouds: str | None) -> None:
    """Run the controller daemon in the foreground (systemd runs this)."""
    import asyncio

    from skyjobs.config import load_config
    from skyjobs.controller.daemon import Controller
    from skyjobs.logsetup import setup_logging

    cfg = load_config(state_dir=obj.state_dir, host=host, port=port, clouds=clouds)
    setup_logging(cfg.log_format)
    asyncio.run(Controller(cfg).serve())


@main.command(hidden=True)
def agent() -> None:
    """Run a node agent (started by providers on each instance)."""
    from skyjobs.node.agent import main as agent_main

    agent_main()


# --- jobs --------------------------------------------------------------------------------

def _parse_envs(pairs: tuple[str, ...], env_file: Path | None = None,
                flag: str = "--env") -> dict[str, str]:
    """``KEY=VALUE``, or ``KEY`` alone to take the value from this shell's environment (as
    ``sky launch --env WANDB_API_KEY``); an env file's values come first."""
    out: dict[str, str] = {}
    if env_file is not None:
        from dotenv import dotenv_values

        try:
            loaded = dotenv_values(env_file)
        except (OSError, UnicodeDecodeError) as err:
            raise click.BadParameter(f"cannot read {env_file}: {err}",
                                     param_hint="--env-file") from None
        out.update({k: v if v is not None else "" for k, v in loaded.items()})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE or KEY", param_hint=flag)
        if not sep:
            if key not in os.environ:
                raise click.BadParameter(f"{key} is not set in this environment (give "
                                         f"{key}=VALUE)", param_hint=flag)
            value = os.environ[key]
        out[key] = value
    return out


def _apply_overrides(document: Any, secrets: dict[str, str], gpus: str | None,
                     cloud: str | None, use_spot: bool | None) -> Any:
    """Command-line overrides of the task document, as ``sky jobs launch`` applies them:
    to the task's resources and to each of its any_of/ordered alternatives."""
    if not isinstance(document, dict):
        return document
    if secrets:
        document["secrets"] = {**(document.get("secrets") or {}), **secrets}
    wanted = {k: v for k, v in (("accelerators", gpus), ("cloud", cloud),
                                ("use_spot", use_spot)) if v is not None}
    if not wanted:
        return document
    resources = document.setdefault("resources", {}) or {}
    document["resources"] = resources
    if isinstance(resources, dict):
        if "accelerators" in wanted:
            resources.pop("gpus", None)
        resources.update(wanted)
        for key in ("any_of", "ordered"):
            for choice in resources.get(key) or []:
                if isinstance(choice, dict):
                    for field in wanted:
                        choice.pop(field, None)
                    if "accelerators" in wanted:
                        choice.pop("gpus", None)
    return document


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", "-n", default=None, help="Job name (default: the task's name).")
@click.option("--env", "envs", multiple=True, metavar="KEY[=VALUE]",
              help="Set or override an env of the task; KEY alone takes this shell's value "
                   "(repeatable).")
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Envs from a dotenv file (--env wins).")
@click.option("--secret", "secrets", multiple=True, metavar="KEY[=VALUE]",
              help="Set a secret (never shown by queue, status, events or logs); KEY alone "
                   "takes this shell's value (repeatable).")
@click.option("--gpus", default=None, metavar="NAME[:COUNT]",
              help="Override the task's accelerators, e.g. H100:8.")
@click.option("--cloud", default=None, help="Override the task's cloud.")
@click.option("--use-spot/--no-use-spot", default=None, help="Override spot or on-demand.")
@click.option("--num-jobs", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Submit a job array: N jobs of this task, SKYPILOT_JOB_RANK 0..N-1.")
@click.option("--follow", is_flag=True, help="Stream logs until the job ends; exit 0 only "
                                             "if it SUCCEEDED.")
@click.option("--detach", "-d", is_flag=True,
              help="Return once submitted (the default; the opposite of --follow).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (skyjobs never asks to submit).")
@pass_ctx
def submit(obj: Ctx, file: Path, name: str | None, envs: tuple[str, ...],
           env_file: Path | None, secrets: tuple[str, ...], gpus: str | None,
           cloud: str | None, use_spot: bool | None, num_jobs: int, follow: bool,
           detach: bool, yes: bool) -> None:
    """Submit a task YAML; prints the job id (the first id of a job array).

    A file of several tasks (YAML documents separated by ---, optionally a first document
    with only name:) is a pipeline: one job whose tasks run in order, each on its own
    placement. With no controller configured or reachable, starts a local one in the
    background.
    """
    if follow and detach:
        raise click.UsageError("--follow and --detach are opposites")
    if follow and num_jobs > 1:
        raise click.UsageError("--follow streams one job; follow an array's jobs one by one")
    overrides = _parse_envs(envs, env_file)
    secret_values = _parse_envs(secrets, flag="--secret")
    pipeline = load_pipeline(file)
    documents = [_apply_overrides(d, secret_values, gpus, cloud, use_spot)
                 for d in pipeline.documents]
    if secret_values or gpus or cloud or use_spot is not None:
        pipeline = pipeline_from_documents(documents, str(file), file.resolve().parent)
    # The SDK's submit body (envs checked and workdirs packed before any controller starts:
    # the controller checks again).
    body = sdk.submission(pipeline, str(file), name, overrides, num_jobs)
    client = obj.client(autostart=True)
    reply = client.submit_body(body)
    for line in sdk.notes(pipeline, str(file)):
        click.echo(f"note: {line}", err=True)
    if num_jobs > 1:
        click.echo(" ".join(str(i) for i in reply.ids or [reply.id]))
        click.echo(f"job array {reply.array_id}: {num_jobs} jobs", err=True)
        return
    click.echo(reply.id)
    if follow:
        live = _LiveStatus(client, reply.id) if _interactive() else None
        try:
            _follow_logs(client, reply.id, None, live=live)
        finally:
            if live is not None:
                live.clear()
        job = client.get(reply.id)
        click.echo(f"job {job.id} {job.status}" + (f": {job.reason}" if job.reason else ""),
                   err=True)
        sys.exit(0 if job.succeeded else 1)


@main.command()
@click.option("--status", "-s", "statuses", default=None,
              help="Comma-separated states to show.")
@click.option("--name", "-n", default=None, help="Only jobs of this name.")
@click.option("--array", type=click.IntRange(1), default=None, help="Only this job array.")
@click.option("--all", "-a", "all_", is_flag=True,
              help="Also ended jobs (default: unfinished jobs and the last day's ended ones).")
@click.option("--limit", type=click.IntRange(1, 10000), default=1000, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def queue(obj: Ctx, statuses: str | None, name: str | None, array: int | None, all_: bool,
          limit: int, offset: int, as_json: bool) -> None:
    """List jobs, newest first."""
    jobs = obj.client().queue(status=statuses or None, limit=limit, offset=offset,
                              name=name or None, array=array or None)
    if not all_ and not statuses:
        since = time.time() - RECENT_S
        jobs = [j for j in jobs if j.status not in TERMINAL or (j.ended_at or 0) >= since]
    if as_json:
        click.echo(json.dumps([_as_json(j) for j in jobs], indent=2))
        return
    rows = [[str(j.id), j.name, j.status, j.placement or "-", str(j.recoveries),
             fmt_time(j.submitted_at), fmt_duration(j.duration_s), f"${j.cost:.4f}"]
            for j in jobs]
    click.echo(table(rows, ["ID", "NAME", "STATUS", "PLACEMENT", "RECOVERIES", "SUBMITTED",
                             "DURATION", "COST"]))


@main.command()
@click.argument("job_id", type=int, required=False)
@click.option("--controllers", "show_controllers", is_flag=True,
              help="Show the controllers sharing the store instead: live or not, jobs each "
                   "runs, and the singleton duties of the one that answered.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def status(obj: Ctx, job_id: int | None, show_controllers: bool, as_json: bool) -> None:
    """Show one job: state, placement, attempts and cost (or, with --controllers, which
    controller runs how many jobs)."""
    if show_controllers:
        _show_controllers(obj, as_json)
        return
    if job_id is None:
        raise click.UsageError("give a JOB_ID, or --controllers")
    j = obj.client().get(job_id)
    if as_json:
        click.echo(json.dumps(_as_json(j), indent=2))
        return
    click.echo(f"job {j.id} ({j.name}): {j.status}" + (f" - {j.reason}" if j.reason else ""))
    click.echo(f"  task id:     {j.task_id}")
    if j.tasks > 1:
        click.echo(f"  pipeline:    task {j.current_task} of {j.tasks}")
    click.echo(f"  placement:   {j.placement or '-'}")
    click.echo(f"  recoveries:  {j.recoveries}   restarts after errors: {j.restarts}")
    click.echo(f"  submitted:   {fmt_time(j.submitted_at)}   duration: "
               f"{fmt_duration(j.duration_s)}")
    click.echo(f"  cost:        ${j.cost:.4f} (on-demand would be ${j.on_demand_cost:.4f},"
               f" saving ${j.saving:.4f})")
    if j.exit_code is not None:
        click.echo(f"  exit code:   {j.exit_code}")
    rows = [[str(a.n), str(a.task), a.placement, a.status, a.end_reason or "-",
             fmt_time(a.created_at), f"${a.cost:.4f}"]
            for a in j.attempt_list]
    if rows:
        click.echo(table(rows, ["ATTEMPT", "TASK", "PLACEMENT", "STATUS", "ENDED BY",
                                 "LAUNCHED", "COST"]))


def _show_controllers(obj: Ctx, as_json: bool) -> None:
    c = obj.client().controllers()
    if as_json:
        click.echo(json.dumps(_as_json(c), indent=2))
        return
    rows = [[m.id + (" *" if m.id == c.this else ""), "live" if m.live else
             ("stopped" if m.stopped_at else "silent"), str(m.jobs),
             fmt_duration(m.heartbeat_age), m.agent_url or m.url or "-",
             ", ".join(c.duties) if m.id == c.this else "-"]
            for m in c.controllers]
    click.echo(table(rows, ["CONTROLLER", "STATE", "JOBS", "HEARD", "URL", "DUTIES"]))


@main.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def events(obj: Ctx, job_id: int, as_json: bool) -> None:
    """Show a job's state transitions and other events."""
    evs = obj.client().events(job_id)
    if as_json:
        click.echo(json.dumps([_as_json(e) for e in evs], indent=2))
        return
    for e in evs:
        click.echo(event_line(e.model_dump()))


def _as_json(model: Any) -> Any:
    """A reply model as the controller sent it (only the fields it gave)."""
    return model.model_dump(mode="json", exclude_unset=True)


def _interactive() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


class _LiveStatus:
    """``submit --follow`` on a terminal: one line under the streaming logs with the job's
    state, placement, recoveries and cost so far, redrawn in place (on stderr, so stdout
    carries the logs alone). Only for a terminal: pipes and tests get plain log lines."""

    REFRESH_S = 2.0

    def __init__(self, client: Client, job_id: int) -> None:
        self.client, self.job_id = client, job_id
        self.text = f"job {job_id}: submitted"
        self.fetched_at = 0.0
        self.shown = False
        self.at_line_start = True  # the status may only be drawn under a complete line

    def line(self, job: Job) -> str:
        parts = [f"job {job.id}", job.status, job.placement or "no placement yet",
                 f"{job.recoveries} recover{'y' if job.recoveries == 1 else 'ies'}",
                 f"${job.cost:.4f} so far", fmt_duration(job.duration_s)]
        if round(job.saving, 4) > 0:
            parts.insert(5, f"saving ${job.saving:.4f}")
        return " | ".join(parts)

    def refresh(self) -> None:
        if time.monotonic() - self.fetched_at >= self.REFRESH_S:
            self.fetched_at = time.monotonic()
            try:
                self.text = self.line(self.client.get(self.job_id))
            except SkyjobsError:
                pass  # a controller restart: keep the last line, the logs go on
        self.draw()

    def draw(self) -> None:
        if not self.at_line_start:
            return
        width = max(20, _terminal_width() - 1)
        click.echo("\r\x1b[K" + click.style(self.text[:width], reverse=True), nl=False,
                   err=True)
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            click.echo("\r\x1b[K", nl=False, err=True)
            self.shown = False

    def wrote(self, text: str) -> None:
        if text:
            self.at_line_start = text.endswith("\n")


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


def _follow_logs(client: Client, job_id: int, attempt: int | None, follow: bool = True,
                 rank: int = 0, live: _LiveStatus | None = None) -> None:
    shown_attempt = None
    chunks = client.log_chunks(job_id, attempt, follow=follow, rank=rank,
                               on_idle=live.refresh if live is not None else None)
    for chunk in chunks:
        if live is not None:
            live.clear()
        if attempt is None and chunk.attempt != shown_attempt:
            if live is not None and not live.at_line_start:
                click.echo()
            click.echo(f"=== attempt {chunk.attempt} ===")
            shown_attempt = chunk.attempt
        click.echo(chunk.data, nl=False)
        if live is not None:
            live.wrote(chunk.data)
            live.refresh()


@main.command()
@click.argument("job_id", type=int)
@click.option("--follow/--no-follow", "-f", default=True, show_default=True,
              help="Keep streaming until the job ends.")
@click.option("--attempt", type=click.IntRange(1), default=None,
              help="Only this attempt (default: every attempt in order).")
@click.option("--node", type=click.IntRange(0), default=0, show_default=True,
              help="Node rank.")
@click.option("--task", type=click.IntRange(1), default=None,
              help="A pipeline's task: only its attempts (1 is the first task).")
@pass_ctx
def logs(obj: Ctx, job_id: int, follow: bool, attempt: int | None, node: int,
         task: int | None) -> None:
    """Print a job's logs; every attempt's logs are kept."""
    client = obj.client()
    if task is None or attempt is not None:
        _follow_logs(client, job_id, attempt, follow=follow, rank=node)
        return
    job = client.get(job_id)
    if not 1 <= task <= job.tasks:
        raise click.BadParameter(f"job {job_id} has {job.tasks} task(s)", param_hint="--task")
    mine = [a.n for a in job.attempt_list if a.task == task]
    for n in mine:
        click.echo(f"=== task {task}, attempt {n} ===")
        # Only the task's last attempt, while the job is still on it, can grow.
        live = follow and n == mine[-1] and job.current_task == task
        _follow_logs(client, job_id, n, follow=live, rank=node)


@main.command()
@click.argument("job_ids", type=int, nargs=-1)
@click.option("--all", "-a", "all_", is_flag=True, help="Cancel every unfinished job.")
@click.option("--name", "-n", default=None, help="Cancel the unfinished jobs of this name.")
@click.option("--array", type=click.IntRange(1), default=None,
              help="Cancel the unfinished jobs of this job array.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (skyjobs never asks to cancel).")
@pass_ctx
def cancel(obj: Ctx, job_ids: tuple[int, ...], all_: bool, name: str | None,
           array: int | None, yes: bool) -> None:
    """Cancel jobs; their instances are terminated, also mid-recovery."""
    chosen = [bool(job_ids), all_, name is not None, array is not None]
    if sum(chosen) != 1:
        raise click.UsageError("give job ids, --name, --array or --all (one of them)")
    reply = obj.client().cancel(list(job_ids) or None, name=name, array=array, all=all_)
    for job_id in reply.cancelled:
        click.echo(f"cancelling job {job_id}")
    for s in reply.skipped:
        click.echo(f"skipped job {s.id}: {s.why}", err=True)
    if reply.skipped and not reply.cancelled:
        sys.exit(1)


@main.command()
@click.argument("job_id", type=int)
@click.option("--notice", type=click.FloatRange(0, 3600), default=120.0, show_default=True,
              help="Seconds of notice before the instance dies.")
@pass_ctx
def preempt(obj: Ctx, job_id: int, notice: float) -> None:
    """Simulate a spot preemption of a job's instances (local provider)."""
    reply = obj.client().preempt(job_id, notice)
    click.echo(f"preempting job {job_id} attempt {reply.attempt} with {notice:g}s notice")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(1), default=30, show_default=True,
              help="Rows of the table to show (--json gives every row).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def plan(obj: Ctx, file: Path, limit: int, as_json: bool) -> None:
    """Rank every offering of every cloud in the catalog for a task, launching nothing.

    Rows are marked enabled or not by the running controller (its live prices and
    preemption memory), or with none running by this machine's config (list prices).
    Starts no controller; missing workdirs and bucket problems are warnings here (submit
    refuses them).
    """
    problems: list[str] = []
    pipeline = load_pipeline(file, path_problems=problems)
    count = len(pipeline.tasks)
    replies = []
    for i, (spec, document) in enumerate(zip(pipeline.tasks, pipeline.documents,
                                             strict=True)):
        source = task_source(str(file), i, count)
        reply = _plan_task(obj.state_dir, obj.controller, spec, raw_task(document), source)
        warnings = [*(problems if i == 0 else []), *(f"{source}: {w}"
                                                     for w in reply["warnings"])]
        replies.append({**reply, "warnings": warnings, "notes": spec.notes(source)})
    if as_json:
        click.echo(json.dumps(replies[0] if count == 1 else {"tasks": replies}, indent=2))
        return
    for i, reply in enumerate(replies):
        if count > 1:
            click.echo(f"{'' if i == 0 else chr(10)}=== task {i + 1} of {count} ===")
        _print_plan(reply, limit)


def _print_plan(reply: dict[str, Any], limit: int) -> None:
    warnings, notes = reply["warnings"], reply["notes"]
    enabled = ", ".join(reply["enabled"]) or "none"
    click.echo(f"strategy {reply['strategy']}, {reply['num_nodes']} node(s); "
               f"enabled: {enabled} ({reply['enabled_by']})")
    rows = [[str(i + 1), c["cloud"], c["region"], c["zone"], c["instance_type"],
             c["accelerator"] or "-", "spot" if c["spot"] else "on-demand",
             f"${c['price_per_hour']:.3f}", "yes" if c["enabled"] else "no", c["reason"]]
            for i, c in enumerate(reply["candidates"][:limit])]
    click.echo(table(rows, ["#", "CLOUD", "REGION", "ZONE", "INSTANCE", "ACCEL", "MARKET",
                             "$/H", "ENABLED", "WHY"]))
    more = len(reply["candidates"]) - len(rows)
    if more > 0:
        click.echo(f"... {more} more (--limit {len(reply['candidates'])}, or --json)")
    pick = reply["pick"]
    if pick is not None:
        click.echo(f"would launch first: {pick['cloud']}/{pick['zone']}/"
                   f"{pick['instance_type']}/{'spot' if pick['spot'] else 'on-demand'} "
                   f"at ${pick['price_per_hour']:.3f}/h")
    else:
        wanted = sorted({c["cloud"] for c in reply["candidates"]})
        click.echo(f"would launch first: nothing: no enabled cloud can run this task "
                   f"(it can run on {', '.join(wanted)}; enable one, then `skyjobs check`)")
    for line in warnings:
        click.echo(f"warning: {line} (submit refuses this)")
    for line in notes:
        click.echo(f"note: {line}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@pass_ctx
def check(obj: Ctx, file: Path | None) -> None:
    """Per cloud: enabled or not and why, credentials, default image; with FILE, its
    buckets and paths. Exits 1 when an enabled cloud cannot launch or FILE would be
    refused at submit. Never prints a secret.
    """
    findings = _run_checks(obj.state_dir, obj.controller, file)
    for finding in findings:
        click.echo(finding.line())
    sys.exit(1 if any(f.fatal for f in findings) else 0)


# --- plan and check: they work before any setup ------------------------------------------

def _reachable(state_dir: Path, url: str | None) -> tuple[Client | None, str]:
    """The controller to ask, if one answers (never started here), and why not if none."""
    try:
        client = connect(state_dir, url, autostart=False)
    except ControllerUnavailableError as err:
        return None, str(err)
    if url and not client.healthy():
        return None, f"cannot reach the controller at {client.url}"
    return client, ""


def _local_config(state_dir: Path) -> tuple[Any, str]:
    """This machine's controller config (``SKYJOBS_*``, the state dir's config.yaml), or
    the defaults and the reason when it is invalid."""
    from skyjobs.config import ControllerConfig, load_config
    from skyjobs.exceptions import ConfigError

    try:
        return load_config(state_dir=state_dir), ""
    except ConfigError as err:
        return ControllerConfig.model_construct(state_dir=state_dir, clouds=["local"]), str(err)


def _plan_task(state_dir: Path, url: str | None, spec: Any, task: Any,
               source: str) -> dict[str, Any]:
    """The controller's plan when one answers, else the same ranking made here from the
    catalog, this machine's config, list prices and an empty preemption memory."""
    client, why = _reachable(state_dir, url)
    if client is not None:
        try:
            reply: dict[str, Any] = _as_json(client.plan_body({"task": task,
                                                               "source": source}))
            reply["enabled_by"] = (f"the controller at {reply.get('controller') or client.url};"
                                   " its live prices and preemption memory")
            return reply
        except ControllerUnavailableError as err:
            why = str(err)
    from skyjobs.controller import views
    from skyjobs.pricing.catalog import Catalog
    from skyjobs.pricing.prices import PriceBook
    from skyjobs.recovery.memory import PreemptionMemory

    cfg, bad = _local_config(state_dir)
    enabled = set(cfg.clouds)
    ctx = views.fresh_ranking_context(cfg, spec, PreemptionMemory(),
                                      PriceBook(cfg.price_max_age), time.time())
    try:
        catalog = Catalog.for_clouds(enabled, state_dir=state_dir)
        reply = views.plan_reply(spec, views.plan_catalog(catalog), enabled, ctx,
                                 state_dir / "buckets")
    except SkyjobsError as err:
        raise SkyjobsError(f"{source}: {err}") from None
    reply["enabled_by"] = "this machine's config; no controller running: list prices"
    if bad:
        reply["warnings"].append(f"ignoring this machine's config: {bad}")
    if url:
        click.echo(f"note: {why}; planning here from the catalog", err=True)
    return reply


class Finding:
    """One line of ``skyjobs check``; ``fatal`` makes the command exit 1."""

    def __init__(self, topic: str, text: str, fatal: bool = False) -> None:
        self.topic, self.text, self.fatal = topic, text, fatal

    def line(self) -> str:
        return f"{self.topic}: {'FAIL: ' if self.fatal else ''}{self.text}"


def _run_checks(state_dir: Path, url: str | None, file: Path | None) -> list[Finding]:
    import asyncio

    from skyjobs.pricing.catalog import load_cloud, shipped_clouds

    out: list[Finding] = []
    client, why = _reachable(state_dir, url)
    cfg, bad = _local_config(state_dir)
    if bad:
        out.append(Finding("config", f"invalid, defaults used: {bad}", fatal=client is None))
    controller: dict[str, Any] | None = None
    if client is not None:
        try:
            controller = _as_json(client.clouds())
        except ControllerUnavailableError as err:
            why = str(err)
        except ApiError as err:  # an older controller, or a wrong token
            out.append(Finding("controller", f"{client.url} did not say which clouds it "
                               f"enables: {err}", fatal=True))
            why = f"{client.url} could not be asked"
    if controller is not None:
        enabled = list(controller["enabled"])
        where = controller.get("url") or (client.url if client is not None else "")
        out.append(Finding("controller", f"{where} enables {', '.join(enabled) or 'nothing'}"))
    else:
        enabled = list(cfg.clouds)
        where = why if url or client is not None else f"none running on {state_dir}"
        out.append(Finding("controller", f"{where}; one started here would enable "
                           f"{', '.join(enabled) or 'nothing'} (SKYJOBS_CLOUDS, or clouds: in "
                           f"{state_dir / 'config.yaml'})"))
    ready = {c["cloud"]: c for c in (controller or {}).get("clouds", [])}
    # Without a controller, the clouds of this machine's config are the ones that must work.
    must_work = controller is None
    for cloud in sorted({*shipped_clouds(), "local", "aws", "gcp", *enabled}):
        on = cloud in enabled
        if cloud in ready:
            r = ready[cloud]
            detail = "; ".join(r["notes"]) or "ready"
            out.append(Finding(cloud, f"enabled on the controller: {r['offerings']} offerings;"
                               f" {detail}", fatal=not r["ready"]))
        elif cloud == "local":
            out.append(Finding(cloud, f"{'enabled' if on else 'not enabled'}: always available "
                               f"(processes on this machine; {len(load_cloud('local'))} "
                               "offerings)"))
        elif cloud in ("aws", "gcp"):
            if not on:
                out.append(Finding(cloud, f"not enabled (SKYJOBS_CLOUDS={cloud},local or "
                                   f"clouds: [{cloud}, local] in config.yaml; see "
                                   f"docs/{cloud}.md)"))
            elif controller is None:
                out.append(Finding(cloud, "enabled in this machine's config"))
        else:
            out.append(Finding(cloud, f"{'enabled' if on else 'not enabled'}: no provider in "
                               "this build (`skyjobs plan` ranks its catalog; jobs cannot "
                               "launch there yet)", fatal=on and must_work))
        # This machine's view (the controller's own was checked when it started).
        if cloud == "aws":
            out.extend(asyncio.run(_check_aws(fatal=on and must_work)))
        elif cloud == "gcp":
            out.extend(_check_gcp(fatal=on and must_work))
    if file is not None:
        out.extend(asyncio.run(_check_file(file, enabled, state_dir)))
    return out


async def _check_aws(fatal: bool) -> list[Finding]:
    """aws as this machine sees it: the extra installed, credentials (their source only),
    and the image of every region of the catalog. ``fatal``: aws is to be enabled here."""
    from skyjobs.pricing.catalog import load_cloud

    out: list[Finding] = []
    try:
        from skyjobs.providers.aws import AwsConfig, AwsProvider
    except ImportError as err:
        out.append(Finding("aws", f"the aws extra is not installed (pip install "
                           f"'skyjobs[aws]'): {err}", fatal=fatal))
        return out
    try:
        config = AwsConfig.from_env()
    except SkyjobsError as err:
        out.append(Finding("aws", str(err), fatal=fatal))
        return out
    method = _aws_credentials_method()
    if method.startswith("not found") or method.startswith("cannot"):
        out.append(Finding("aws", f"credentials: {method}", fatal=fatal))
    else:
        out.append(Finding("aws", f"credentials: found ({method})"))
    if config.endpoint_url:
        out.append(Finding("aws", f"endpoint: {config.endpoint_url} (SKYJOBS_AWS_ENDPOINT_URL)"))
    regions = sorted({o.region for o in load_cloud("aws")})
    provider = AwsProvider(config, regions=regions)
    try:
        if any(not config.explicit_image(r) for r in regions) and method.startswith(
                ("not found", "cannot")):
            out.append(Finding("aws", "images: not checked without credentials (the default "
                               "image is read from SSM)", fatal=fatal))
            return out
        try:
            images = await provider.resolve_images()
        except SkyjobsError as err:
            out.append(Finding("aws", f"images: {err}", fatal=fatal))
            return out
        for region in regions:
            out.append(Finding("aws", f"image {region}: {images[region]} "
                               f"({provider.images.source(region)})"))
    finally:
        await provider.close()
    return out


def _check_gcp(fatal: bool) -> list[Finding]:
    """gcp as this machine sees it: the extra installed, where Application Default
    Credentials come from (never what they are), the project, the images launches use."""
    try:
        from skyjobs.providers.gcp.config import GcpConfig
        from skyjobs.providers.gcp.credentials import describe_credentials
    except ImportError as err:
        return [Finding("gcp", f"the gcp extra is not installed (pip install "
                        f"'skyjobs[gcp]'): {err}", fatal=fatal)]
    try:
        config = GcpConfig.from_env()
    except SkyjobsError as err:
        return [Finding("gcp", str(err), fatal=fatal)]
    out: list[Finding] = []
    found = describe_credentials(config)
    out.append(Finding("gcp", f"credentials: {found.how}", fatal=fatal and not found.ok))
    if found.project:
        out.append(Finding("gcp", f"project: {found.project} ({found.project_source})"))
    else:
        out.append(Finding("gcp", "project: none (set SKYJOBS_GCP_PROJECT)", fatal=fatal))
    if config.endpoint_url:
        out.append(Finding("gcp", f"endpoint: {config.endpoint_url} (SKYJOBS_GCP_ENDPOINT_URL)"))
    out.append(Finding("gcp", f"images: {config.image} (CPU), {config.gpu_image} (GPU); "
                       "SKYJOBS_GCP_IMAGE / SKYJOBS_GCP_GPU_IMAGE"))
    if not config.external_ip:
        out.append(Finding("gcp", "nodes get no external IP: they must reach the controller "
                           "through the VPC (Cloud NAT, VPN or a private address)"))
    return out


def _aws_credentials_method() -> str:
    """How botocore's chain finds credentials ("env", "shared-credentials-file",
    "iam-role"...), never the credentials themselves."""
    try:
        import botocore.session
        from botocore.exceptions import BotoCoreError

        try:
            creds = botocore.session.get_session().get_credentials()
        except BotoCoreError as err:
            return f"cannot be read: {' '.join(str(err).split())}"
    except ImportError as err:
        return f"cannot be read: {err}"
    if creds is None:
        return ("not found (environment, AWS_PROFILE and ~/.aws, SSO, or the instance role "
                "of this machine)")
    return str(getattr(creds, "method", None) or "unknown source")


async def _check_file(file: Path, enabled: list[str], state_dir: Path) -> list[Finding]:
    """What submit would refuse about FILE's paths and buckets, checked now."""
    problems: list[str] = []
    try:
        pipeline = load_pipeline(file, path_problems=problems)
    except SkyjobsError as err:
        return [Finding("task", str(err), fatal=True)]
    out = [Finding("task", p, fatal=True) for p in problems]
    for i, spec in enumerate(pipeline.tasks):
        topic = task_source(str(file), i, len(pipeline.tasks))
        out.extend(Finding("task", f"note: {n}") for n in spec.notes(topic))
        out.extend(await _check_buckets(spec, topic, enabled, state_dir))
    return out


async def _check_buckets(spec: TaskSpec, topic: str, enabled: list[str],
                         state_dir: Path) -> list[Finding]:
    from skyjobs.checkpoint.buckets import local_bucket_dir

    out: list[Finding] = []
    for target, mount in spec.buckets().items():
        where = f"{topic}: file_mounts.{target}: {mount.source}"
        scheme = mount.source.split("://", 1)[0]
        cloud = {"local": "local", "s3": "aws", "gs": "gcp"}.get(scheme, scheme)
        if cloud not in enabled:
            out.append(Finding("bucket", f"{where}: needs the {cloud} provider, which is not "
                               "enabled", fatal=True))
        if scheme == "local":
            try:
                path = local_bucket_dir(mount.source, state_dir / "buckets")
            except ValueError as err:
                out.append(Finding("bucket", f"{where}: {err}", fatal=True))
                continue
            out.append(Finding("bucket", f"{where}: local bucket at {path}"
                               + ("" if path.exists() else " (created on first use)")))
        elif scheme in ("s3", "gs"):
            out.append(await _check_remote_bucket(where, mount.source, scheme))
        else:
            out.append(Finding("bucket", f"{where}: {scheme}:// buckets cannot be checked: "
                               f"{cloud} has no provider in this build", fatal=True))
    return out


def _bucket_provider(scheme: str) -> Any:
    """The provider that checks ``scheme://`` buckets, from this machine's settings; raises
    ImportError without its extra and SkyjobsError for invalid settings."""
    if scheme == "s3":
        from skyjobs.providers.aws import AwsConfig, AwsProvider

        return AwsProvider(AwsConfig.from_env())
    from skyjobs.providers.gcp.compute import GcpProvider
    from skyjobs.providers.gcp.config import GcpConfig

    return GcpProvider(GcpConfig.from_env())


async def _check_remote_bucket(where: str, source: str, scheme: str) -> Finding:
    """An s3:// or gs:// bucket as submit would check it, with this machine's credentials."""
    import asyncio

    from skyjobs.providers.base import BucketChecker, ability

    extra, service = {"s3": ("aws", "S3"), "gs": ("gcp", "GCS")}[scheme]
    try:
        provider = _bucket_provider(scheme)
    except ImportError as err:
        return Finding("bucket", f"{where}: cannot check without the {extra} extra: {err}",
                       fatal=True)
    except SkyjobsError as err:
        return Finding("bucket", f"{where}: {err}", fatal=True)
    try:
        checker = ability(provider, BucketChecker)
        assert checker is not None
        async with asyncio.timeout(60):
            await checker.check_bucket(source)
        return Finding("bucket", f"{where}: reachable (listed, wrote and deleted a probe "
                       "object with this machine's credentials)")
    except SkyjobsError as err:
        return Finding("bucket", f"{where}: {' '.join(str(err).split())}", fatal=True)
    except TimeoutError:
        return Finding("bucket", f"{where}: {service} did not answer within 60s", fatal=True)
    finally:
        await provider.close()


@main.command()
@click.argument("zone")
@click.option("--spot/--no-spot", default=True,
              help="Give the zone spot capacity back, or take it away.")
@pass_ctx
def capacity(obj: Ctx, zone: str, spot: bool) -> None:
    """Set a local zone in or out of spot capacity (simulated market)."""
    reply = obj.client().set_capacity(zone, spot)
    zones = ", ".join(reply.no_spot_zones) or "none"
    click.echo(f"zones without spot capacity: {zones}")


@main.command()
@click.option("--accelerator", default=None, help="Only this accelerator (e.g. A100).")
@click.option("--cloud", default=None, help="Only this cloud.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def prices(obj: Ctx, accelerator: str | None, cloud: str | None, as_json: bool) -> None:
    """Show spot prices: live where the poller has read them, stale or list otherwise."""
    reply = obj.client().prices(accelerator=accelerator, cloud=cloud)
    if as_json:
        click.echo(json.dumps([_as_json(p) for p in reply.prices], indent=2))
        return
    rows = [[p.cloud, p.region, p.zone, p.instance_type, p.accelerator or "-",
             f"${p.ondemand_price:.3f}",
             f"${p.spot_price:.3f}" if p.spot_price is not None else "-",
             p.status + (f" ({fmt_time(p.observed_at)})" if p.observed_at else "")]
            for p in reply.prices]
    click.echo(table(rows, ["CLOUD", "REGION", "ZONE", "INSTANCE", "ACCEL", "ON-DEMAND",
                             "SPOT", "SPOT PRICE IS"]))


@main.group()
def webhooks() -> None:
    """Webhooks configured in the controller's config.yaml."""


@webhooks.command("test")
@click.argument("name")
@pass_ctx
def webhooks_test(obj: Ctx, name: str) -> None:
    """Send a sample event to webhook NAME now and show the receiver's answer."""
    reply = obj.client().test_webhook(name)
    if reply.ok:
        click.echo(f"{name}: delivered (HTTP {reply.status}), delivery {reply.delivery}")
        return
    click.echo(f"{name}: not delivered: {reply.error}", err=True)
    sys.exit(1)


@main.command("gc")
@click.option("--older-than", "older_than", type=click.FloatRange(0, 36500), default=None,
              metavar="DAYS", help="Remove jobs that ended more than DAYS ago  [default: the "
                                   "controller's retention_days, 30]")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@pass_ctx
def gc_command(obj: Ctx, older_than: float | None, dry_run: bool) -> None:
    """Run the retention sweep now (the controller also runs it hourly).

    Removes jobs that ended long enough ago, with their attempts, events, webhook
    deliveries, logs and workdir archives; cost totals in /metrics are kept."""
    reply = obj.client().gc(older_than, dry_run)
    verb = "would remove" if reply.dry_run else "removed"
    parts = ", ".join(f"{n} {kind}" for kind, n in reply.removed.items() if n) or "nothing"
    click.echo(f"older than {reply.older_than_days:g} days: {verb} {parts}")


@main.command("db")
@click.argument("table_name", metavar="TABLE", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 100_000),
              help="Rows of TABLE to show, newest first.")
@pass_ctx
def db_command(obj: Ctx, table_name: str | None, limit: int) -> None:
    """Look inside the state directory's store (read-only; task secrets redacted).

    Without TABLE: every table with its row count. With TABLE: its newest rows as JSON
    lines. Safe while the controller runs.
    """
    from skyjobs.config import ControllerConfig
    from skyjobs.controller import store as st

    path = ControllerConfig.model_construct(state_dir=obj.state_dir).db_path
    db = st.open_readonly(path)
    try:
        if table_name is None:
            counts = st.table_counts(db)
            click.echo(table([[name, str(n)] for name, n in counts.items()], ["TABLE", "ROWS"]))
            return
        for row in st.table_rows(db, table_name, limit):
            click.echo(json.dumps(row, default=str))
    finally:
        db.close()


def _register_extra_commands() -> None:
    from skyjobs.catalog_cli import catalog
    from skyjobs.demo import demo
    from skyjobs.simulate_cli import simulate

    main.add_command(catalog)
    main.add_command(demo)
    main.add_command(simulate)


_register_extra_commands()


def _late_globals(command: click.Command) -> None:
    """``--state-dir`` and ``--controller`` also after the subcommand (``skyjobs queue
    --state-dir X``), as sky users type them; they override the ones before it."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _late_globals(sub)
        return

    def setter(attr: str) -> Any:
        def set_value(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
            if value is not None:
                obj = ctx.find_object(Ctx)
                if obj is not None:
                    setattr(obj, attr, value.expanduser().resolve()
                            if isinstance(value, Path) else value)
            return value
        return set_value

    command.params += [
        click.Option(["--state-dir"], type=click.Path(file_okay=False, path_type=Path),
                     default=None, expose_value=False, callback=setter("state_dir"),
                     is_eager=True, help="As the global option (either place works)."),
        click.Option(["--controller"], default=None, metavar="URL", expose_value=False,
                     callback=setter("controller"), is_eager=True,
                     help="As the global option (either place works)."),
    ]


for _command in main.commands.values():
    _late_globals(_command)


def run() -> None:
    """Entry point: one clear error line, never a traceback."""
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except ControllerUnavailableError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(3)
    except SkyjobsError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as err:  # noqa: BLE001 - a bug still gets one line, not a traceback
        if os.environ.get("SKYJOBS_DEBUG"):
            raise
        click.echo(f"error: unexpected {type(err).__name__}: {err} (SKYJOBS_DEBUG=1 shows "
                   "the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
