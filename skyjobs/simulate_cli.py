"""``skyjobs simulate``: replay placement policies over spot-capacity traces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from skyjobs.exceptions import SkyjobsError
from skyjobs.recovery.policy import effective_strategy
from skyjobs.recovery.sim.simulator import (
    BUILTIN_NAMES,
    Report,
    SimConfig,
    evaluate,
    total_runs,
)
from skyjobs.recovery.sim.traces import TraceSet, load_traces
from skyjobs.spec import STRATEGIES, JobRecovery

DEFAULT_POLICIES = ("default", "skypilot", "single-zone-greedy")


def load_price_file(path: str) -> dict[str, float]:
    """A JSON object of zone or region -> spot $/hour, e.g. ``{"us-east-1": 0.92,
    "us-west-2b": 0.99}``; a zone's entry wins over its region's."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise click.UsageError(f"--prices {path}: cannot read: {err}") from None
    except json.JSONDecodeError as err:
        raise click.UsageError(
            f"--prices {path}: not JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(doc, dict) or not doc:
        raise click.UsageError(f"--prices {path}: must be a JSON object of location: $/hour")
    out: dict[str, float] = {}
    for key, value in doc.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise click.UsageError(f"--prices {path}: {key}: price must be a number >= 0")
        out[str(key)] = float(value)
    return out


def resolve_policy(name: str, job_hours: float, deadline_hours: float | None) -> str:
    if name.lower() == "default":
        recovery = JobRecovery(deadline_hours=deadline_hours,
                               expected_runtime_hours=job_hours if deadline_hours else None)
        return effective_strategy(recovery)
    if name.upper() in STRATEGIES:
        return name.upper()
    if name.lower() in BUILTIN_NAMES:
        return name.lower()
    known = ", ".join(["default", *BUILTIN_NAMES])
    raise click.UsageError(f"--policy {name!r} is unknown (known: {known})")


def format_report(report: Report) -> str:
    head = (f"{'policy':<24}{'runs':>6}{'mean $':>10}{'saving':>9}{'vs bound':>10}"
            f"{'misses':>8}{'preempt':>9}{'moves':>7}{'hours':>8}")
    lines = [f"traces {report.traces}: {report.starts} starts, {report.nodes} node(s), "
             f"all on-demand ${report.ondemand_cost:.2f}", head, "-" * len(head)]
    for p in report.policies:
        vs = f"{p.vs_bound:+.1%}" if p.vs_bound is not None else "-"
        lines.append(f"{p.name:<24}{p.runs:>6}{p.mean_cost:>10.2f}{p.savings:>9.1%}{vs:>10}"
                     f"{p.misses:>8}{p.preemptions:>9.1f}{p.zone_changes:>7.1f}"
                     f"{p.mean_hours:>8.1f}")
    return "\n".join(lines)


PLOT_SUFFIXES = (".svg", ".png")


def plot_report(report: Report, path: Path, title: str) -> None:
    """Cost against deadline misses, one point per policy, with the omniscient bound and
    all-on-demand as reference lines; SVG or PNG by the file's suffix. Needs matplotlib
    (the ``plot`` extra), imported only here."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.UsageError("--plot needs matplotlib: pip install 'skyjobs[plot]'") from None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    try:
        shown = [p for p in report.policies if p.name != "omniscient"]
        worst = max([100.0 * p.misses / max(1, p.runs) for p in shown] + [1.0])
        for p in shown:
            miss = 100.0 * p.misses / max(1, p.runs)
            ax.scatter([miss], [p.mean_cost], s=60, zorder=3)
            ax.annotate(p.name, (miss, p.mean_cost), textcoords="offset points",
                        xytext=(6, 4), fontsize=9)
        if report.bound_cost is not None:
            ax.axhline(report.bound_cost, linestyle="--", color="0.3",
                       label=f"omniscient bound ${report.bound_cost:.2f}")
        ax.axhline(report.ondemand_cost, linestyle=":", color="0.5",
                   label=f"all on-demand ${report.ondemand_cost:.2f}")
        ax.set_xlabel("deadline misses (% of runs)")
        ax.set_ylabel("mean cost per job ($)")
        ax.set_xlim(-0.05 * worst, worst * 1.25)  # room for the labels on the right
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _plot_path(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise click.BadParameter("must end in .svg or .png")
    if not path.parent.is_dir():
        raise click.BadParameter(f"{path.parent} is not a directory")
    return path


def _evaluate_with_progress(traces: TraceSet, cfg: SimConfig, names: list[str],
                            with_bound: bool) -> Report:
    """``evaluate`` under a progress bar of its runs on stderr when that is a terminal
    (the replay of a week of traces takes minutes); plain otherwise, so pipes and --json
    stay clean."""
    if not sys.stderr.isatty():
        return evaluate(traces, cfg, names, with_bound=with_bound)
    cfg.validate()
    total = total_runs(traces, cfg, names, with_bound)
    with click.progressbar(length=total, label="replaying", file=sys.stderr,
                           item_show_func=lambda what: what, show_eta=True) as bar:

        def step(what: str, done: int) -> None:
            bar.update(done, what)

        return evaluate(traces, cfg, names, with_bound=with_bound, progress=step)


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive")
    return value


def _not_negative(ctx: click.Context, param: click.Parameter,
                  value: float | None) -> float | None:
    if value is not None and value < 0:
        raise click.BadParameter("must not be negative")
    return value


@click.command("simulate")
@click.option("--traces", "traces_dir", required=True,
              help="Directory of <zone>_<gpu>_<count>.json capacity traces.")
@click.option("--policy", "policies", multiple=True,
              help="Policy to replay (repeatable): default, a strategy name, skypilot, "
                   "single-zone-greedy, on-demand. Default: default, skypilot, "
                   "single-zone-greedy.")
@click.option("--job-hours", type=float, required=True, callback=_positive)
@click.option("--deadline-hours", type=float, callback=_positive)
@click.option("--restart-minutes", type=float, default=3.0, show_default=True,
              callback=_not_negative)
@click.option("--checkpoint-minutes", type=float, default=30.0, show_default=True,
              callback=_positive)
@click.option("--notice-seconds", type=float, default=120.0, show_default=True,
              callback=_not_negative, help="Preemption notice (AWS 120, GCP 30).")
@click.option("--launch-fail-seconds", type=float, callback=_positive,
              help="Wall time a failed launch costs [default: one trace gap].")
@click.option("--spot-price", type=float, callback=_not_negative,
              help="Spot $/hour per node in every zone [default: 0.97].")
@click.option("--prices", "prices_file", help="JSON object of zone or region -> spot $/hour.")
@click.option("--on-demand-price", type=float, default=3.06, show_default=True,
              callback=_not_negative)
@click.option("--start-every-hours", type=float, default=6.0, show_default=True,
              callback=_positive)
@click.option("--zone-cooldown-minutes", type=float, default=30.0, show_default=True,
              callback=_not_negative,
              help="The controller's zone cooldown after a preemption (config zone_cooldown).")
@click.option("--nodes", type=int, help="Nodes per job [default: the traces' largest count].")
@click.option("--no-bound", is_flag=True, help="Skip the omniscient bound (it is the slow part).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--plot", "plot_file", callback=_plot_path, metavar="FILE.svg|FILE.png",
              help="Also draw mean cost against deadline misses per policy, with the bound "
                   "(needs matplotlib: the plot extra).")
def simulate(traces_dir: str, policies: tuple[str, ...], job_hours: float,
             deadline_hours: float | None, restart_minutes: float, checkpoint_minutes: float,
             notice_seconds: float, launch_fail_seconds: float | None,
             spot_price: float | None, prices_file: str | None, on_demand_price: float,
             start_every_hours: float, zone_cooldown_minutes: float, nodes: int | None,
             no_bound: bool, as_json: bool, plot_file: Path | None) -> None:
    """Replay placement policies over spot-capacity traces and compare their costs."""
    if spot_price is not None and prices_file is not None:
        raise click.UsageError("give --spot-price or --prices, not both")
    if nodes is not None and nodes < 1:
        raise click.UsageError("--nodes must be at least 1")
    if deadline_hours is not None and deadline_hours < job_hours:
        raise click.UsageError("--deadline-hours is shorter than --job-hours")
    names = [resolve_policy(n, job_hours, deadline_hours) for n in policies or DEFAULT_POLICIES]
    cfg = SimConfig(
        job_hours=job_hours, deadline_hours=deadline_hours, restart_s=restart_minutes * 60,
        checkpoint_interval_s=checkpoint_minutes * 60, notice_s=notice_seconds,
        launch_fail_s=launch_fail_seconds,
        spot_price=spot_price if spot_price is not None else 0.97,
        spot_prices=load_price_file(prices_file) if prices_file else {},
        ondemand_price=on_demand_price, nodes=nodes, start_every_hours=start_every_hours,
        zone_cooldown_s=zone_cooldown_minutes * 60)
    try:
        traces = load_traces(traces_dir)
        unique = list(dict.fromkeys(names))
        report = _evaluate_with_progress(traces, cfg, unique, not no_bound)
    except SkyjobsError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), sort_keys=True))
    else:
        click.echo(format_report(report))
    if plot_file is not None:
        deadline = f", deadline {deadline_hours:g} h" if deadline_hours else ""
        plot_report(report, plot_file, f"{report.traces}: {job_hours:g} h job{deadline}, "
                                       f"{report.starts} starts")
        if not as_json:
            click.echo(f"plot: {plot_file}")
