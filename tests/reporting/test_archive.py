"""The compact copies committed under results/: complete, read like the runs, stable bytes."""

from __future__ import annotations

import gzip

from metairm_pl.reporting.archive import archive
from metairm_pl.reporting.records import load_run, load_runs
from metairm_pl.reporting.selection import get_selection
from metairm_pl.reporting.tables import build_tables, render_markdown
from metairm_pl.run import train


def test_archived_runs_report_exactly_like_the_runs(make_config, tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        train(make_config(["data=synthetic", "algorithm=irm", "trainer.max_steps=4", "trainer.val_check_interval=2",
                           "logger=csv", f"seed={seed}"], name=f"sweep/synthetic/irm/default/seed={seed}"))  # fmt: skip
    unfinished = sweep / "synthetic" / "irm" / "default" / "seed=2"
    unfinished.mkdir(parents=True)
    (unfinished / "results.jsonl").write_text("")  # still running: not archived

    archived, skipped = archive([sweep], tmp_path / "results")
    assert len(archived) == 2 and skipped == [unfinished.resolve()]
    copy = tmp_path / "results" / "synthetic" / "irm" / "default" / "seed=0"
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "config.yaml", "csv/metrics.csv.gz", "done", "final.json", "results.jsonl.gz",
    ]  # fmt: skip
    original = sweep / "synthetic" / "irm" / "default" / "seed=0"
    assert gzip.decompress((copy / "results.jsonl.gz").read_bytes()) == (original / "results.jsonl").read_bytes()
    assert load_run(copy).records == load_run(original).records

    (unfinished / "results.jsonl").unlink()
    unfinished.rmdir()
    selection = get_selection("last")
    tables = [
        render_markdown(build_tables(load_runs([root]), selection), selection) for root in (sweep, tmp_path / "results")
    ]
    assert tables[0] == tables[1]

    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    archive([sweep], tmp_path / "results")  # the same records again: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == stamps


def test_a_compact_copy_archives_again_without_losing_its_records(make_config, tmp_path):
    """A sweep resumed from results/ holds compact copies beside new runs: archiving it keeps their
    compressed records byte for byte instead of deleting them."""
    train(make_config(["data=synthetic", "algorithm=erm", "trainer.max_steps=2", "trainer.val_check_interval=2",
                       "logger=csv"], name="sweep/synthetic/erm/default/seed=0"))  # fmt: skip
    archive([tmp_path / "sweep"], tmp_path / "results")
    copy = tmp_path / "results" / "synthetic" / "erm" / "default" / "seed=0"
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert {"results.jsonl.gz", "csv/metrics.csv.gz"} <= {p.as_posix() for p in before}

    archive([tmp_path / "results"], tmp_path / "again")
    again = tmp_path / "again" / "synthetic" / "erm" / "default" / "seed=0"
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*") if p.is_file()} == before
    archive([tmp_path / "results"], tmp_path / "results")  # onto itself: nothing removed
    assert {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
