"""The scorecard REPORT.md opens with (every seed number found at its cited line; this study's
numbers follow the results), REPORT.html (every figure REPORT.md links embedded), commands
relative to the project and sweeps listed in numeric order."""

import base64
import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest

from hw1_tf import experiments, markdown, report_writer, scorecard, store

SEEDS = Path(__file__).resolve().parent / "data" / "seeds"
SHARED = Path("/work/shared/seeds")  # the originals, where this machine has them


def test_every_seed_number_is_found_at_its_cited_line():
    found = scorecard.quotes()
    assert {q.report for q in found} == set(scorecard.REPORTS)
    assert scorecard.problems(found, SEEDS) == []
    # the rows the experiments declare are the keys quoted (no quote names a missing row)
    declared = {k for m in experiments.modules() for k in getattr(m, "SCORECARD", {})}
    assert {q.key for q in found} <= declared
    # the 000 report's minimal-ratio range, as the issue quotes it
    (q,) = [q for q in found if q.key == "minimal_ratio.range" and q.report == "000"]
    assert q.value == "0.52–0.64" and q.cite[0].line == 178


def test_a_misquoted_number_or_line_is_caught():
    q = next(q for q in scorecard.quotes() if q.key == "flatness.test_loss")
    wrong_line = dataclasses.replace(q, cite=(dataclasses.replace(q.cite[0],
                                                                  line=q.cite[0].line + 1),))
    wrong_number = dataclasses.replace(q, value=q.value.replace("0.0966", "0.0967"))
    assert any("is not on line" in p for p in scorecard.problems([wrong_line], SEEDS))
    assert any("0.0967 is in none" in p for p in scorecard.problems([wrong_number], SEEDS))


@pytest.mark.skipif(not SHARED.is_dir(), reason="the original seeds are not on this machine")
def test_the_copied_seed_texts_are_the_originals():
    for path in SEEDS.glob("*.txt"):
        assert path.read_bytes() == (SHARED / path.name).read_bytes(), path.name


@pytest.fixture(scope="module")
def out(tmp_path_factory, shared_run):
    """Three experiments with scorecard rows, the session's tiny shared runs (conftest: no
    XLA; test_report and test_hw13_measures read them too)."""
    root = tmp_path_factory.mktemp("scorecard")
    for name in NAMES:
        shared_run(name, root)
    return root


NAMES = ("random_labels", "flatness", "sensitivity")


def _scorecard_of(text: str) -> str:
    return text.split("## Scorecard", 1)[1].split("\n## ", 1)[0]


def test_the_report_opens_with_the_scorecard_read_from_the_results(out):
    text, failed = report_writer.render(store.Paths.create(out), "quick", NAMES)
    assert not failed
    assert text.index("## Scorecard") < text.index("## Where the numbers come from") < \
        text.index("## HW1-3")
    card = _scorecard_of(text)
    runs = store.load_results(store.Paths.create(out), "flatness")["runs"]
    for r in runs.values():
        assert f"batch {r['batch_size']}: {markdown.fmt(r['own']['test_loss'])}" in card
    assert "0.0966, batch 1024: 0.0939" in card  # report 000's, from seeds.json
    rows = [line for line in card.splitlines() if line.startswith("| HW1-3")]
    assert len(rows) == sum(len(experiments.get(n).SCORECARD) for n in NAMES)


def test_the_scorecard_numbers_change_when_the_results_change(out, tmp_path):
    copy_root = tmp_path / "copy"
    (copy_root / "results").mkdir(parents=True)
    for name in NAMES:
        results = store.load_results(store.Paths.create(out), name)
        if name == "flatness":
            for r in results["runs"].values():
                r["own"]["test_loss"] = 7.25 + r["batch_size"]
        if name == "random_labels":
            fitted = max(results["runs"].values(), key=lambda r: r["ratio"])
            fitted["final_test_loss"], fitted["epochs_to_fit"] = 12.5, 987
        if name == "sensitivity":
            for r in results["runs"].values():
                r["sensitivity_loss_grad"] = 1000.0 / r["batch_size"]  # falls with the batch
        config = results.pop("config")
        runs = results.pop("runs")
        extras = {k: v for k, v in results.items()
                  if k not in ("experiment", "command", "created", "arrays_file")}
        store.save_results(store.Paths.create(copy_root), name, config, runs, **extras)
    before = _scorecard_of(report_writer.render(store.Paths.create(out), "quick", NAMES)[0])
    after = _scorecard_of(report_writer.render(store.Paths.create(copy_root), "quick",
                                               NAMES)[0])
    assert "batch 16: 23.2, batch 128: 135" in after and "23.2" not in before
    assert "987 epochs" in after and "test loss 12.5" in after
    assert "Kendall τ -1.0 against the batch size" in after
    assert "‖dL/dx‖ 62.5 at batch size 16 to 3.91 at 256" in after


def test_a_missing_experiment_keeps_its_rows_with_the_command(tmp_path):
    text, _ = report_writer.render(store.Paths.create(tmp_path), "quick", ("flatness",))
    row = next(line for line in _scorecard_of(text).splitlines() if "interpolat" in line)
    assert "not run: `bin/run_flatness --flagfile=flags/quick/flatness.flags --output_dir=" \
        in row
    assert "0.0966" in row  # the reports' values stay


def test_sweeps_read_in_numeric_order(out):
    text, _ = report_writer.render(store.Paths.create(out), "quick", ("sensitivity",))
    sizes = [int(m) for m in re.findall(r"^\| (\d+) \| ", text, re.M)]
    assert sizes == [16, 64, 256]  # as strings the runs sort bs16, bs256, bs64
    assert sorted(["bs1024", "bs16", "bs256", "bs4096", "bs64"], key=store.natural_key) == \
        ["bs16", "bs64", "bs256", "bs1024", "bs4096"]


def test_commands_are_relative_to_the_project(out):
    results = store.load_results(store.Paths.create(out), "flatness")
    results["command"] = ("bin/run_flatness --flagfile=/elsewhere/checkout/flags/full/"
                          f"flatness.flags --data_dir={store.project_root()}/data --epochs=3")
    assert markdown.project_command(results["command"]) == (
        "bin/run_flatness --flagfile=flags/full/flatness.flags --data_dir=data --epochs=3")
    # a flag file the project does not have (a registered module's) stays as it was
    other = "python -m hw1_tf toy --flagfile=/elsewhere/flags/quick/toy.flags"
    assert markdown.project_command(other) == other
    ctx = markdown.Context(store.Paths.create(store.project_root() / "out"), "flatness")
    assert ctx.command.endswith("--flagfile=flags/full/flatness.flags --output_dir=out")


def test_report_html_embeds_every_figure_the_markdown_links(out):
    path = report_writer.write_report(store.Paths.create(out), "quick", NAMES, strict=True)
    text = path.read_text()
    page = (path.parent / report_writer.HTML_NAME).read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 5
    for link in links:
        data = base64.b64encode((path.parent / link).read_bytes()).decode()
        assert f'src="data:image/png;base64,{data}"' in page, link
    assert 'src="figures/' not in page and "<table>" in page
    assert page.count("<img") == len(links)


def test_a_wide_figure_keeps_its_text_readable_at_the_report_width(tmp_path):
    from hw1_tf import figures

    fig, axes = figures.plt.subplots(1, 3, figsize=(15, 4))
    for ax in axes:
        ax.plot([1, 2], [3, 4], label="a curve")
        figures.finish_axes(ax, "a title", "x", "y")  # legend at fontsize 8
    title = axes[0].title
    figures.readable_text(fig)
    floor = figures.MIN_TEXT_PX * 72 * 15 / figures.REPORT_WIDTH_PX  # 9 px shown = 10.8 pt
    legend = axes[0].get_legend().get_texts()[0]
    assert legend.get_fontsize() == pytest.approx(floor)  # 8 pt would show as 6.7 px
    assert title.get_fontsize() == pytest.approx(12 * (15 / 7.5) ** 0.5)  # rc default 12
    fig.canvas.draw()
    tick = axes[0].get_xticklabels()[0]
    assert tick.get_fontsize() >= floor
    # a figure of the base width is left as it is
    small, ax = figures.plt.subplots(figsize=(7, 4))
    ax.set_title("t")
    figures.readable_text(small)
    assert ax.title.get_fontsize() == pytest.approx(12)
    figures.plt.close("all")
