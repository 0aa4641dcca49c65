"""`mapmerge plot`: the final group's plots drawn again from the run's artifacts, as the aggregate stage draws them."""

from __future__ import annotations

from pathlib import Path

from mapmerge.core.metrics import maximized, metrics_from_examples, suffixes, wide_metrics
from mapmerge.io import read_table
from mapmerge.layout import Layout
from mapmerge.outputs.notes import interval_level
from mapmerge.run import runlock
from mapmerge.tools.check import read_checked, require_columns
from mapmerge.tools.runfolder import UsageError, final_group, front_file, objective_metric, run_objective, scan


def replot(results: Path, out_dir: Path | None = None, metric: str | None = None) -> list[Path]:
    """Render the final group's plots again from the run's artifacts, as the aggregate stage does, into `out_dir`
    (default RESULTS/plots; for a metric other than the run's objective RESULTS/plots/<metric>, so that the run's own
    plots, which report.md shows, stay)."""
    from mapmerge.outputs import plots  # deferred: matplotlib

    results = Path(results)
    layout = scan(results)
    group, info = final_group(layout)
    paths = Layout(results)
    if out_dir is not None:
        _check_inside(results, Path(out_dir), paths.plots)
    front = read_checked(front_file(results, group), info["tasks"]).assign(group=group)
    given = metric
    metric, _ = objective_metric(results, front, info["tasks"], given)
    objective = metric if given is None else run_objective(results, front, info["tasks"])
    if out_dir is None and metric != objective:
        out_dir = paths.plots / metric
    target = paths.plots if out_dir is None else Path(out_dir)
    if target.resolve() == paths.plots.resolve() and (driver := runlock.holder(results)) is not None:
        raise UsageError(
            f"a snakemake driver ({runlock.describe(driver)}) is running on {results}, whose aggregate job draws "
            f"{paths.plots}/; wait for it to finish, or give --out another folder"
        )
    chosen = None
    if paths.choice(group).exists():
        chosen = read_checked(paths.choice(group), info["tasks"]).assign(group=group)
        if paths.selected_evals(group).exists():
            measured = metrics_from_examples(read_table(paths.selected_evals(group))).set_index(["metric", "task"])[
                "value"
            ]
            for name in sorted(set(measured.index.get_level_values("metric"))):
                for task in suffixes(chosen.columns, metric):
                    chosen[f"measured_{name}_{task}"] = measured[(name, task)]
    samples = read_checked(paths.samples(group))
    samples = samples.merge(wide_metrics(read_checked(paths.metrics(group)), "sample").reset_index(), on="sample")
    reference = read_checked(paths.reference, info["tasks"])
    members = suffixes(front.columns, "c")
    measured = None  # the group's measured front (aggregate writes it; a run finished before it existed has none)
    if paths.measured.exists():
        measured = read_table(paths.measured)
        wanted = ["group", *(f"c_{m}" for m in members), *(f"{metric}_{t}" for t in info["tasks"])]
        require_columns(paths.measured, measured, wanted)
        measured = measured[measured["group"] == group]
    if out_dir is not None:  # made once the run has been read: a refused command leaves no folder behind
        _make_folder(Path(out_dir))
    return plots.plot_all(
        samples,
        front,
        reference,
        suffixes(front.columns, metric),
        metric,
        out_dir if out_dir is not None else paths.plots,
        selected=chosen,
        maximize=maximized(metric),
        members=members,
        measured=measured,
        objective=objective,
        interval=interval_level(paths.selected),
    )


def _check_inside(results: Path, out_dir: Path, plots: Path) -> None:
    """Refuse an --out inside the run folder but outside RESULTS/plots/, or one holding the run folder: the PNGs
    would lie among the run's artifacts (select and export refuse the same, check_out)."""
    run, target = results.resolve(), out_dir.resolve()
    if (target.is_relative_to(run) and not target.is_relative_to(plots.resolve())) or run.is_relative_to(target):
        where = "inside" if target.is_relative_to(run) else "holds"
        raise UsageError(
            f"--out {out_dir}: {where} the run folder {results}, where plot writes only under {plots}/; give a folder "
            "there or outside the run folder"
        )


def _make_folder(out_dir: Path) -> None:
    """The --out folder made (with its parents); UsageError naming it where it cannot be (a file is in the way)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: is a file; give a folder for the PNGs")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out_dir}: cannot be made a folder for the PNGs ({exc.strerror})") from None
