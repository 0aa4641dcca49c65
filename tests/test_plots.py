"""Tests of mapmerge.outputs.plots: real Agg rendering of small synthetic fronts."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mapmerge.outputs.plots import plot_all, plot_front_2d, plot_front_parallel

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tables(tasks: list[str], metric: str = "accuracy", n_front: int = 12, measured: bool = True):
    """Synthetic samples, front, reference and selected tables in the documented shapes."""
    rng = np.random.default_rng(0)
    t = len(tasks)

    def metrics(c: np.ndarray) -> dict[str, np.ndarray]:
        return {
            f"{metric}_{task}": 0.2 + 0.7 * c[:, i] - 0.3 * (c.sum(1) - c[:, i]) ** 2 / t
            for i, task in enumerate(tasks)
        }

    c_samples = rng.uniform(0, 1, size=(15, t))
    samples = pd.DataFrame(
        {"sample": range(15), **{f"c_{k}": c_samples[:, i] for i, k in enumerate(tasks)}, **metrics(c_samples)}
    )
    c_front = rng.dirichlet(np.ones(t), size=n_front)
    front = pd.DataFrame({**{f"c_{k}": c_front[:, i] for i, k in enumerate(tasks)}, **metrics(c_front)})
    reference = pd.DataFrame(
        [("pretrained", k, metric, 0.15) for k in tasks]
        + [(m, k, metric, 0.95 if m == k else 0.1) for m in tasks for k in tasks],
        columns=["model", "task", "metric", "value"],
    )
    selected = front.iloc[[n_front // 2]].reset_index(drop=True)
    if measured:
        for k in tasks:
            selected[f"measured_{metric}_{k}"] = selected[f"{metric}_{k}"] - 0.03
    return samples, front, reference, selected


def assert_png(path: Path) -> None:
    """`path` is a PNG with visible content, and no temporary file is left beside it."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert float(image[..., :3].var()) > 1e-3
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_front_2d_writes_png(tmp_path: Path) -> None:
    tasks = ["rot90", "invert"]
    samples, front, reference, selected = tables(tasks)
    out = plot_front_2d(samples, front, reference, tasks, "accuracy", tmp_path / "sub" / "f.png", selected=selected)
    assert out == tmp_path / "sub" / "f.png"
    assert_png(out)


def test_front_2d_minimal_inputs_and_loss(tmp_path: Path) -> None:
    tasks = ["a", "b"]
    samples, front, _, selected = tables(tasks, metric="loss", measured=False)
    out = plot_front_2d(
        samples.iloc[:0], front, None, tasks, "loss", tmp_path / "f.png", selected=selected, maximize=False
    )
    assert_png(out)


def test_front_2d_needs_two_tasks(tmp_path: Path) -> None:
    tasks = ["a", "b", "c"]
    samples, front, reference, _ = tables(tasks)
    with pytest.raises(ValueError, match="exactly 2 tasks"):
        plot_front_2d(samples, front, reference, tasks, "accuracy", tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []


def test_missing_metric_column_is_named(tmp_path: Path) -> None:
    tasks = ["a", "b"]
    _, front, _, _ = tables(tasks)
    with pytest.raises(ValueError, match="loss_a"):
        plot_front_parallel(front, tasks, "loss", tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tasks", [["a"], ["digits04", "rot90", "invert", "mirror_parity"]])
def test_front_parallel_writes_png(tmp_path: Path, tasks: list[str]) -> None:
    _, front, _, selected = tables(tasks)
    assert_png(plot_front_parallel(front, tasks, "accuracy", tmp_path / "p.png", selected=selected))


def test_front_parallel_single_point_without_selection(tmp_path: Path) -> None:
    tasks = ["a", "b", "c"]
    _, front, _, _ = tables(tasks, n_front=1)
    assert_png(plot_front_parallel(front, tasks, "accuracy", tmp_path / "p.png"))


def test_plot_all(tmp_path: Path) -> None:
    two = ["rot90", "invert"]
    samples, front, reference, selected = tables(two)
    paths = plot_all(samples, front, reference, two, "accuracy", tmp_path / "two", selected=selected)
    assert sorted(p.name for p in paths) == ["front_2d.png", "front_parallel.png"]
    four = ["a", "b", "c", "d"]
    samples, front, reference, selected = tables(four)
    paths = plot_all(samples, front, reference, four, "accuracy", tmp_path / "four", selected=selected)
    assert [p.name for p in paths] == ["front_parallel.png"]
    assert sorted(p.name for p in (tmp_path / "four").iterdir()) == ["front_parallel.png"]
    for path in paths:
        assert_png(path)


def test_the_measured_front_is_drawn_with_the_predicted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both plots draw the measured front's points (2 tasks: in metric space; parallel coordinates: coefficients and
    metrics), under one legend entry; without it, neither plot has that entry."""
    import mapmerge.outputs.plots as plots

    figures: dict[str, Figure] = {}
    save = plots.save

    def keep(fig: Figure, path: Path) -> Path:
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    tasks = ["rot90", "invert"]
    samples, front, reference, selected = tables(tasks)
    cols = [f"accuracy_{t}" for t in tasks]
    measured = samples.iloc[[3, 7, 11]].assign(accuracy_rot90=[0.9, 0.5, 0.2], accuracy_invert=[0.1, 0.4, 0.8])
    plot_all(samples, front, reference, tasks, "accuracy", tmp_path, selected, measured=measured)
    label = "measured Pareto front (3 evaluated merges)"
    (line,) = [a for a in figures["front_2d.png"].axes[0].get_lines() if a.get_label() == label]
    np.testing.assert_array_equal(np.column_stack(line.get_data()), measured[cols].sort_values(cols).to_numpy())
    coefficients, metrics = figures["front_parallel.png"].axes[:2]
    for ax, columns in ((coefficients, [f"c_{t}" for t in tasks]), (metrics, cols)):
        (drawn,) = [c for c in ax.collections if c.get_label() == label]
        expected = measured.sort_values([f"c_{t}" for t in tasks] + cols)[columns].to_numpy()
        np.testing.assert_array_equal(np.array([path.vertices[:, 1] for path in drawn.get_paths()]), expected)
    assert metrics.get_title() == "Accuracy per task, predicted and measured"
    figures.clear()
    plot_all(samples, front, reference, tasks, "accuracy", tmp_path, selected)
    for fig in figures.values():
        assert all(label not in a.get_legend_handles_labels()[1] for a in fig.axes)


def test_the_legends_name_the_intervals_level_where_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mapmerge.outputs.plots as plots

    legends: dict[str, list[str]] = {}
    save = plots.save

    def keep(fig: Figure, path: Path) -> Path:
        legends[Path(path).name] = [text.get_text() for legend in fig.legends for text in legend.get_texts()]
        return save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    tasks = ["rot90", "invert"]
    samples, front, reference, selected = tables(tasks)
    for t in tasks:  # intervals beside the predictions, as pareto_front writes them
        front[f"accuracy_{t}_lo"], front[f"accuracy_{t}_hi"] = (
            front[f"accuracy_{t}"] - 0.05,
            front[f"accuracy_{t}"] + 0.05,
        )
        selected[f"accuracy_{t}_lo"], selected[f"accuracy_{t}_hi"] = selected[f"accuracy_{t}"] - 0.05, 1.0
    for interval, label in (
        (0.8, "80% prediction interval (surrogate.interval)"),
        (None, "prediction interval (surrogate.interval)"),
    ):
        plot_all(samples, front, reference, tasks, "accuracy", tmp_path, selected, interval=interval)
        assert set(legends) == {"front_2d.png", "front_parallel.png"}
        assert all(label in texts and sum("prediction interval" in t for t in texts) == 1 for texts in legends.values())


def test_plots_are_deterministic(tmp_path: Path) -> None:
    tasks = ["rot90", "invert"]
    samples, front, reference, selected = tables(tasks)
    first = [p.read_bytes() for p in plot_all(samples, front, reference, tasks, "accuracy", tmp_path / "1", selected)]
    second = [p.read_bytes() for p in plot_all(samples, front, reference, tasks, "accuracy", tmp_path / "2", selected)]
    assert first == second


def test_the_titles_name_the_fronts_metric_where_they_are_drawn_in_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mapmerge plot --metric`: fronts found by one metric drawn in another say so in both titles; drawn in their own
    metric (as aggregate draws them), the titles are as before."""
    import mapmerge.outputs.plots as plots

    titles: dict[str, str] = {}
    save = plots.save

    def keep(fig: Figure, path: Path) -> Path:
        titles[Path(path).name] = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        return save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    tasks = ["rot90", "invert"]
    samples, front, reference, selected = tables(tasks)
    plot_all(samples, front, reference, tasks, "accuracy", tmp_path, selected, objective="loss")
    assert titles == {
        "front_parallel.png": "Pareto front in parallel coordinates: 12 points, 2 tasks (fronts by loss, drawn in accuracy)",
        "front_2d.png": "Pareto front of merges: rot90 vs invert\n(fronts by loss, drawn in accuracy)",
    }
    plot_all(samples, front, reference, tasks, "accuracy", tmp_path, selected, objective="accuracy")
    assert not any("drawn in" in title for title in titles.values())


def test_failed_render_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    tasks = ["a", "b"]
    _, front, _, _ = tables(tasks)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_front_parallel(front, tasks, "accuracy", tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []
