"""Text for people: times, durations, tables and job events, as the CLI and the demo show
them (one rendering of an event, wherever it is printed)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def event_line(e: dict[str, Any], *, detail: bool = True) -> str:
    """One event of ``GET /api/v1/jobs/ID/events``; ``detail`` adds time, cost so far,
    attempt, placement and exit code."""
    what = f"{e['from_status'] or '-'} -> {e['to_status']}" if e["kind"] == "transition" \
        else "info"
    if not detail:
        return f"{what:<28} {e['reason'] or ''}"
    extra = "".join([f" [attempt {e['attempt']}]" if e["attempt"] else "",
                     f" [{e['placement']}]" if e["placement"] else "",
                     f" [exit {e['exit_code']}]" if e["exit_code"] is not None else ""])
    return (f"{fmt_time(e['at'])}  ${e['cost_so_far']:<9.4f} {what:<28} "
            f"{e['reason'] or ''}{extra}")
