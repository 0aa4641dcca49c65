"""The layout of a run folder (RESULTS = results_dir/name): the path of every artifact, in one place.

The rules (workflow/rules/*.smk) declare their inputs and outputs with it, the stages that find files by
name use it (aggregate, and outputs/report.py), and `mapmerge status`/`select`/`plot` read a folder back
through it (mapmerge.tools: runfolder, status, select_merge, replot). Every method takes names or Snakemake wildcard patterns alike:
`Layout("results/demo").front("{group}")` is the rule's pattern, `.front("all")` the file.

    RESULTS/
        checkpoints/{pretrained,<task>}.safetensors, benchmark.parquet     the built-in benchmark
        task_vectors/<task>.safetensors, task_vectors.parquet
        reference.parquet, reference_examples.parquet
        levels/level<k>.parquet
        groups/<g>/rounds/r<NN>.parquet, groups/<g>/evals/{b<NNNN>,r<NN>b<NNNN>}.parquet
        groups/<g>/{samples,metrics,surrogate,front,choice,selected_evals}.parquet
        groups/<g>/{merged,vector}.safetensors, groups/<g>/merged/<task>/  (transformers folders)
        evaluations.parquet, pareto.parquet, measured.parquet, selected.parquet, groups.parquet, report.md
        plots/<name>.png, report/<table>.html
        validation/{grid/b<NNNN>,front,front_evals,baselines/<name>}.parquet, validation.parquet
        logs/<rule>.log, logs/<rule>/<wildcard>/.../<wildcard>.log
        selected/ (mapmerge select), .mapmerge.lock (the driver's lock), .mapmerge.home (mapmerge.run.records)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mapmerge.io import RUN_LOCK

PathLike = str | os.PathLike

ROUND_FILE = re.compile(r"^r(\d{2})\.parquet$")  # groups/<g>/rounds/: the sample table of a round
ROUND_BATCH = re.compile(r"^r\d{2}b\d+\.parquet$")  # groups/<g>/evals/: a batch of a Bayesian round (not of the design)


def _nn(number: int | str) -> str:
    """A round number as in file names (01), or a wildcard pattern as it is."""
    return f"{number:02d}" if isinstance(number, int) else str(number)


class Layout:
    """The paths of one run folder's artifacts."""

    def __init__(self, results: PathLike) -> None:
        self.root = Path(results)

    def __repr__(self) -> str:
        return f"Layout({str(self.root)!r})"

    # the built-in benchmark (prepare_benchmark)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, model: str) -> Path:
        """The built-in benchmark's checkpoint of `model` (pretrained, or a task's fine-tuned one)."""
        return self.checkpoints / f"{model}.safetensors"

    @property
    def benchmark(self) -> Path:
        return self.root / "benchmark.parquet"

    # task vectors and the reference models

    @property
    def task_vectors(self) -> Path:
        return self.root / "task_vectors"

    def task_vector(self, task: str) -> Path:
        return self.task_vectors / f"{task}.safetensors"

    @property
    def task_vector_table(self) -> Path:
        return self.root / "task_vectors.parquet"

    def vector(self, model: str, tasks: list[str] | tuple[str, ...]) -> Path:
        """A model's task vector: a task's own, or a group's merge less the pretrained model."""
        return self.task_vector(model) if model in tasks else self.group_vector(model)

    @property
    def reference(self) -> Path:
        return self.root / "reference.parquet"

    @property
    def reference_examples(self) -> Path:
        return self.root / "reference_examples.parquet"

    # the plan

    @property
    def levels(self) -> Path:
        return self.root / "levels"

    def plan(self, level: int | str) -> Path:
        return self.levels / f"level{level}.parquet"

    # a group's files

    @property
    def groups(self) -> Path:
        return self.root / "groups"

    def group(self, group: str) -> Path:
        return self.groups / group

    def rounds(self, group: str) -> Path:
        return self.group(group) / "rounds"

    def round(self, group: str, number: int | str) -> Path:
        """The samples of round `number` (0: the design; 1 and later: Bayesian rounds)."""
        return self.rounds(group) / f"r{_nn(number)}.parquet"

    def evals(self, group: str) -> Path:
        return self.group(group) / "evals"

    def batch(self, group: str, batch: str) -> Path:
        """An evaluation batch of the design (batch: b0000, ...)."""
        return self.evals(group) / f"{batch}.parquet"

    def round_batch(self, group: str, number: int | str, index: str) -> Path:
        """An evaluation batch of a Bayesian round (index: 0000, ...)."""
        return self.evals(group) / f"r{_nn(number)}b{index}.parquet"

    def samples(self, group: str) -> Path:
        return self.group(group) / "samples.parquet"

    def metrics(self, group: str) -> Path:
        return self.group(group) / "metrics.parquet"

    def surrogate(self, group: str) -> Path:
        return self.group(group) / "surrogate.parquet"

    def front(self, group: str) -> Path:
        return self.group(group) / "front.parquet"

    def choice(self, group: str) -> Path:
        return self.group(group) / "choice.parquet"

    def merged(self, group: str) -> Path:
        return self.group(group) / "merged.safetensors"

    def group_vector(self, group: str) -> Path:
        return self.group(group) / "vector.safetensors"

    def merged_folders(self, group: str) -> Path:
        """groups/<g>/merged/<task>/: the merge as transformers folders (model=transformers)."""
        return self.group(group) / "merged"

    def selected_evals(self, group: str) -> Path:
        return self.group(group) / "selected_evals.parquet"

    # the whole run

    @property
    def ledger(self) -> Path:
        return self.root / "evaluations.parquet"

    @property
    def pareto(self) -> Path:
        return self.root / "pareto.parquet"

    @property
    def measured(self) -> Path:
        """Every group's measured front: the real evaluations no other one dominates."""
        return self.root / "measured.parquet"

    @property
    def selected(self) -> Path:
        return self.root / "selected.parquet"

    @property
    def group_tree(self) -> Path:
        return self.root / "groups.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"

    @property
    def report_tables(self) -> Path:
        return self.root / "report"

    def report_table(self, key: str) -> Path:
        """report/<key>.html, for snakemake --report."""
        return self.report_tables / f"{key}.html"

    # validation (validation.enabled)

    @property
    def validation_dir(self) -> Path:
        return self.root / "validation"

    def grid_batch(self, batch: str) -> Path:
        return self.validation_dir / "grid" / f"{batch}.parquet"

    @property
    def validation_front(self) -> Path:
        return self.validation_dir / "front.parquet"

    @property
    def validation_front_evals(self) -> Path:
        return self.validation_dir / "front_evals.parquet"

    def baseline(self, name: str) -> Path:
        return self.validation_dir / "baselines" / f"{name}.parquet"

    @property
    def validation(self) -> Path:
        return self.root / "validation.parquet"

    # what is not an artifact

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, rule: str, *wildcards: str) -> Path:
        """A job's log: logs/<rule>.log, or logs/<rule>/<first wildcard>/.../<last>.log."""
        return (
            self.logs / f"{rule}.log"
            if not wildcards
            else self.logs.joinpath(rule, *wildcards[:-1], f"{wildcards[-1]}.log")
        )

    @property
    def selections(self) -> Path:
        """selected/: where `mapmerge select` writes."""
        return self.root / "selected"

    @property
    def lock(self) -> Path:
        """The driver's lock (mapmerge.run.runlock)."""
        return self.root / RUN_LOCK

    # names read back

    @staticmethod
    def round_number(path: PathLike) -> int | None:
        """The round of a file under rounds/ (r01.parquet: 1); None for another file."""
        match = ROUND_FILE.match(Path(path).name)
        return int(match.group(1)) if match else None

    @staticmethod
    def is_round_batch(path: PathLike) -> bool:
        """Whether a file under evals/ is a Bayesian round's batch (r01b0000.parquet), not the design's (b0000.parquet)."""
        return bool(ROUND_BATCH.match(Path(path).name))
