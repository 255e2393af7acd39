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

import base64
import datetime
import fnmatch
import html
import itertools
import mimetypes
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from absl import logging

from hw1_tf import experiments, markdown, scorecard, store
from hw1_tf.records import typed_runs
from hw1_tf.errors import Hw1Error
from hw1_tf.ledger import StudyLog
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


def section(module: Any, ctx: Context, *, strict: bool = True,
            loaded: tuple[dict[str, Any] | None, str | None] | None = None,
            failed_run: dict[str, Any] | None = None,
            figure_numbers: Iterator[int] | None = None
            ) -> tuple[str, dict[str, Any] | None, str | None]:
    """(markdown of one experiment: its heading, the slides' questions, its body; the results
    it was written from, None when missing or unreadable; the error of a failed section).
    `loaded`: its (results, why missing) when already read; `failed_run`: its entry in
    run_all's record when its last run failed (the section then says so, with the command);
    `figure_numbers`: the report's running figure numbers (each question then names the
    figures that answer it)."""
    head = [f"## {module.TITLE}", "", "Questions of the slides answered here:", ""]
    head += [f"- {q}" for q in module.QUESTIONS]
    results, reason = loaded or _load(ctx)
    error = None
    if failed_run is not None:
        head += ["", f"**This experiment failed** in the last `bin/run_all` (exit status "
                 f"{failed_run.get('returncode')}, {failed_run.get('finished')}): "
                 f"`{markdown.project_command(failed_run.get('command') or ctx.command)}` "
                 "reproduces it" + (", and shows its error. The results below are from an "
                                    "earlier run." if results is not None else
                                    ", and shows its error.")]
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
    if error is None and results is not None:
        body, numbers = number_figures(body, ctx, figure_numbers or itertools.count(1))
        head = head[:4] + [f"- {q}{_answered_by(module, i, numbers)}"
                           for i, q in enumerate(module.QUESTIONS)] + head[4 + len(
                               module.QUESTIONS):]
    return "\n".join(head + ["", body, ""]), results, error


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def number_figures(body: str, ctx: Context, numbers: Iterator[int]) -> tuple[str, dict]:
    """`body` with every figure numbered in order (numbers from `numbers`, shared by the whole
    report) and captioned "Figure n: ...", and {figure key: n}."""
    keys = {ctx.link(path): key for key, path in (ctx.drawn_figures or {}).items()}
    found: dict[str, int] = {}

    def caption(match: re.Match) -> str:
        n = next(numbers)
        if match.group(2) in keys:
            found[keys[match.group(2)]] = n
        return (f"![Figure {n}: {match.group(1)}]({match.group(2)})\n\n"
                f"*Figure {n}: {match.group(1)}.*\n")

    return _IMAGE.sub(caption, body), found


def _answered_by(module: Any, question: int, numbers: dict[str, int]) -> str:
    """" (Figures 3, 4)": the figures that answer question `question` (the module's
    QUESTION_FIGURES patterns, matched against the keys of the figures the section shows)."""
    patterns = getattr(module, "QUESTION_FIGURES", {}).get(question, ())
    shown = sorted({n for key, n in numbers.items()
                    if any(fnmatch.fnmatchcase(key, p) for p in patterns)})
    if not shown:
        return ""
    return f" (Figure{'s' if len(shown) > 1 else ''} {', '.join(map(str, shown))})"


def scorecard_rows(module: Any, ctx: Context, results: dict[str, Any] | None, *,
                   strict: bool = True) -> list[scorecard.Row]:
    """The experiment's scorecard rows; without results (or when its scorecard raises and not
    `strict`) the command that produces them stands in for this study's value."""
    if results is None:
        return scorecard.rows_of(module, None, f"not run: `{ctx.command}`")
    try:
        return scorecard.rows_of(module, typed_runs(results), "not measured by this run")
    except Exception as e:  # noqa: BLE001 - a bug of the scorecard: shown, never hidden
        if strict:
            raise
        logging.error("%s: its scorecard rows failed (%s: %s)", ctx.experiment,
                      type(e).__name__, e)
        return scorecard.rows_of(module, None, f"failed ({type(e).__name__}: {e})")


def render(paths: store.Paths, profile: str = "full", names: Sequence[str] | None = None, *,
           strict: bool = True) -> tuple[str, dict[str, str]]:
    """(the text of REPORT.md from the results under `paths.output_dir`, {experiment: error}
    of the sections that failed; only without `strict`)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    study = StudyLog(paths)
    figure_numbers = itertools.count(1)
    sections, sources, rows, failed = [], [], [], {}
    names = names or experiments.names()
    for name in names:
        module = experiments.get(name)
        ctx = Context(paths, name, profile)
        loaded = _load(ctx)
        failed_run = study.failed(name)
        text, results, error = section(module, ctx, strict=strict, loaded=loaded,
                                       failed_run=failed_run, figure_numbers=figure_numbers)
        sections.append(text)
        rows += scorecard_rows(module, ctx, results, strict=strict)
        rel = ctx.link(paths.results_json(name))
        if error is not None:
            failed[name] = error
            sources.append((module.TITLE, f"section failed ({rel})", f"`{ctx.command}`"))
        elif results is None:
            state = "unreadable" if paths.results_json(name).is_file() else "missing"
            sources.append((module.TITLE, f"{state} ({rel})", f"`{ctx.command}` (to run)"))
        else:
            command = markdown.project_command(results.get("command", "n/a"))
            sources.append((module.TITLE, f"{results.get('created', 'n/a')} ([{rel}]({rel}))",
                            f"`{command}`"))
    header = [
        "# HW1 report: deep vs shallow, optimization, generalization",
        "",
        f"Written {now} by `bin/make_report` from the results listed here; it retrains "
        "nothing. Every number and comment below is computed from these files.",
        "",
    ]
    if rows:
        header += [
            "## Scorecard: this study against three earlier reports", "",
            "Per slide question, the key number measured here (read from the results below) "
            "beside the same quantity as each earlier HW1 report states it (quoted from its "
            "text, with its line; — where it states none). The reports' values are in "
            "`hw1_tf/seeds.json`.", "",
            scorecard.table(rows), "",
        ]
    header += [
        "## Where the numbers come from", "",
        markdown.table(("section", "results written (UTC)", "by the command"), sources),
        "",
    ]
    appendix = timing_appendix({n: experiments.get(n).TITLE for n in names}, study.read())
    return "\n".join(header + sections + appendix), failed


def _machine_text(machine: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items())
    memory = machine.get("memory_gib")
    return (f"{machine.get('cpu', 'n/a')}, {machine.get('cores', 'n/a')} cores, "
            f"{'n/a' if memory is None else f'{memory:g} GiB'}, {machine.get('system', 'n/a')},"
            f" Python {machine.get('python', 'n/a')}; {versions}")


def timing_appendix(titles: dict[str, str], entries: dict[str, dict[str, Any]]) -> list[str]:
    """The appendix: each experiment's wall time, status and command as `bin/run_all` recorded
    them (results/run_all.json), the total, and the machine and library versions they were
    measured on. An experiment run by hand, not by run_all, is listed as not timed."""
    rows, total, cpu_total, machines = [], 0.0, 0.0, {}
    for name, title in titles.items():
        entry = entries.get(name) or {}
        seconds, cpu = entry.get("seconds"), entry.get("cpu_seconds")
        if entry.get("status") in ("done", "failed") and seconds is not None:
            total += float(seconds)
            cpu_total += float(cpu or 0.0)
            machine = entry.get("machine")
            if machine:
                machines.setdefault(_machine_text(machine), []).append(name)
            rows.append((title, entry["status"], markdown.duration(seconds),
                         markdown.duration(cpu), entry.get("profile", "n/a"),
                         entry.get("finished", "n/a"), f"`{entry.get('command', 'n/a')}`"))
        else:
            rows.append((title, entry.get("status", "not run by bin/run_all"), "n/a", "n/a",
                         entry.get("profile", "n/a"), "n/a", "n/a"))
    lines = ["## Appendix: how long each experiment took", "",
             "As `bin/run_all` recorded each experiment's last run (`results/run_all.json`): "
             "wall time from start to exit, including TensorFlow's start and the figures, and "
             "the CPU time (user + system) of its process, which other work on the machine "
             "hardly changes. "
             f"Together: {markdown.duration(total)} wall, {markdown.duration(cpu_total)} CPU.",
             "", markdown.table(("experiment", "status", "wall time", "CPU time", "profile",
                                 "finished (UTC)", "command"), rows), ""]
    if machines:
        lines += ["Measured on:", ""]
        lines += [f"- {text}" + ("" if len(machines) == 1 else f" ({', '.join(names)})")
                  for text, names in machines.items()]
        lines.append("")
    return lines


HTML_NAME = "REPORT.html"
_STYLE = """body { font-family: sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em;
  line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #eee; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
code { background: #f4f4f4; padding: 0 0.2em; }"""
_IMAGE_SRC = re.compile(r'(<img\b[^>]*\bsrc=")([^"]+)(")')


def html_report(text: str, folder: Path) -> str:
    """REPORT.md's `text` as one self-contained HTML page: the figures it links (relative to
    `folder`) embedded as base64 data URIs, so the page needs no other file."""
    import markdown as markdown_lib  # the PyPI package (this project's own is hw1_tf.markdown)

    body = markdown_lib.markdown(text, extensions=["tables", "fenced_code"])

    def embed(match: re.Match) -> str:
        path = folder / html.unescape(match.group(2))
        if not path.is_file():  # REPORT.md links only existing figures; keep it visible
            return match.group(0)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"{match.group(1)}data:{kind};base64,{data}{match.group(3)}"

    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), "Report")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n"
            f"<body>\n{_IMAGE_SRC.sub(embed, body)}\n</body>\n</html>\n")


def write_report(paths: store.Paths, profile: str = "full",
                 names: Sequence[str] | None = None, *, strict: bool = False) -> Path:
    """Writes `<paths.output_dir>/REPORT.md` atomically; returns its path. Raises SectionFailed
    (after writing) when a section failed, naming it."""
    path = paths.output_dir / REPORT_NAME
    text, failed = render(paths, profile, names, strict=strict)
    store.atomic_write_text(path, text)
    store.atomic_write_text(path.with_name(HTML_NAME), html_report(text, path.parent))
    logging.info("report written to %s (and %s, figures embedded)", path, HTML_NAME)
    if failed:
        raise SectionFailed(f"{path} written, but the section(s) of {', '.join(failed)} failed: "
                            + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return path
