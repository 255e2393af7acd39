"""REPORT.md from the results on disk, one section per registered experiment, never retraining.

Every experiment module has TITLE, QUESTIONS and `report_section(results, ctx)` (its training
records typed: `records.typed_runs`), which writes markdown with `hw1_tf.markdown` (its figures by key, a table of its key numbers and comments
computed from them). This writer (a top floor, beside `commands`) puts the sections together and
writes `<output_dir>/REPORT.md` atomically. A question whose results are missing or unreadable
gets the command that produces them instead of a section. A section that raises is a bug: with
`strict` (tests) the error propagates; otherwise the section is marked as failed, with the
error, every other section is written, and `SectionFailed` is raised after the file is written.
"""

from __future__ import annotations

import datetime
import zipfile
from pathlib import Path
from typing import Any, Sequence

from absl import logging

from hw1_tf import experiments, markdown, store
from hw1_tf.records import typed_runs
from hw1_tf.errors import Hw1Error
from hw1_tf.markdown import REPORT_NAME, Context


class SectionFailed(Hw1Error):
    """A report section raised: REPORT.md was written with the section marked as failed."""


def _load(ctx: Context) -> tuple[dict[str, Any] | None, str | None]:
    """(results, None), or (None, why they cannot be read)."""
    try:
        return store.load_results(ctx.paths, ctx.experiment), None
    except (Hw1Error, OSError, ValueError, zipfile.BadZipFile) as e:
        return None, str(e)


def missing_section(ctx: Context, reason: str) -> str:
    return (f"No results to report: `{ctx.command}` produces them, then `bin/make_report"
            f"{ctx.output_flag()}` rewrites this file.\n\n({reason})")


def section(module: Any, ctx: Context, *, strict: bool = True
            ) -> tuple[str, dict[str, Any] | None, str | None]:
    """(markdown of one experiment: its heading, the slides' questions, its body; the results
    it was written from, None when missing or unreadable; the error of a failed section)."""
    head = [f"## {module.TITLE}", "", "Questions of the slides answered here:", ""]
    head += [f"- {q}" for q in module.QUESTIONS]
    results, reason = _load(ctx)
    error = None
    if results is None:
        body = missing_section(ctx, reason)
    else:
        try:
            body = module.report_section(typed_runs(results), ctx).strip()
        except Exception as e:  # noqa: BLE001 - a bug of the section: shown, never hidden
            if strict:
                raise
            error = f"{type(e).__name__}: {e}"
            logging.error("%s: the report section failed (%s)", ctx.experiment, error)
            body = (f"**This section failed** (`{error}`): a bug in "
                    f"`hw1_tf/experiments/{ctx.experiment}.py`, or results written by another "
                    f"version (`{ctx.command}` rewrites them).")
    return "\n".join(head + ["", body, ""]), results, error


def render(paths: store.Paths, profile: str = "full", names: Sequence[str] | None = None, *,
           strict: bool = True) -> tuple[str, dict[str, str]]:
    """(the text of REPORT.md from the results under `paths.output_dir`, {experiment: error}
    of the sections that failed; only without `strict`)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    sections, sources, failed = [], [], {}
    for name in names or experiments.names():
        module = experiments.get(name)
        ctx = Context(paths, name, profile)
        text, results, error = section(module, ctx, strict=strict)
        sections.append(text)
        rel = ctx.link(paths.results_json(name))
        if error is not None:
            failed[name] = error
            sources.append((module.TITLE, f"section failed ({rel})", f"`{ctx.command}`"))
        elif results is None:
            state = "unreadable" if paths.results_json(name).is_file() else "missing"
            sources.append((module.TITLE, f"{state} ({rel})", f"`{ctx.command}` (to run)"))
        else:
            sources.append((module.TITLE, f"{results.get('created', 'n/a')} ([{rel}]({rel}))",
                            f"`{results.get('command', 'n/a')}`"))
    header = [
        "# HW1 report: deep vs shallow, optimization, generalization",
        "",
        f"Written {now} by `bin/make_report` from the results listed here; it retrains "
        "nothing. Every number and comment below is computed from these files.",
        "",
        markdown.table(("section", "results written (UTC)", "by the command"), sources),
        "",
    ]
    return "\n".join(header + sections), failed


def write_report(paths: store.Paths, profile: str = "full",
                 names: Sequence[str] | None = None, *, strict: bool = False) -> Path:
    """Writes `<paths.output_dir>/REPORT.md` atomically; returns its path. Raises SectionFailed
    (after writing) when a section failed, naming it."""
    path = paths.output_dir / REPORT_NAME
    text, failed = render(paths, profile, names, strict=strict)
    store.atomic_write_text(path, text)
    logging.info("report written to %s", path)
    if failed:
        raise SectionFailed(f"{path} written, but the section(s) of {', '.join(failed)} failed: "
                            + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return path
