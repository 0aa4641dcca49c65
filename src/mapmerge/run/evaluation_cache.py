"""Evaluations kept across reruns: an evaluation job whose merges, files, params and code are those of an
earlier one gets that job's table back instead of evaluating again (`evaluation.cache`).

Snakemake reruns a job when another job of the same run rewrote one of its inputs, even byte for byte, and
deletes a job's outputs before running it. So a change that reruns a refinement round (its fit's code, a
deleted round file, `--forcerun`) reran the round's evaluations, and a change upstream of the chosen merge
re-evaluated it, though the merges were the same. Each finished evaluation table is therefore also copied
to the results folder's `.cache/evaluations/<key>.parquet`, and a job whose key is there copies it back.
A job's other tables (the reference models' metrics, the validation front's points) are kept under keys
derived from its key; the job gets all of them back or evaluates.

The key hashes what the table depends on: the rule, its params (the stage's sub-config with its code
fingerprint, and its other params: the design's coefficients), its values other than threads (group, batch
index and size, device, on_error), the content of every file it reads (a Parquet file's data), the order of the
tasks, and of the tables of points (a round's samples, the choice) only the sample names and coefficients; no path
of the model's files (_placeless: a moved model misses nothing). A table holding a failed evaluation
(`on_error: record`) is not kept, so a rerun tries it again. The hashes of large files are noted under
`.cache/hashes/` (content_hash), so a job does not read a model's task vectors twice. Beside each kept table,
`<key>.place` names the job's table (relative to the results folder), so `prune` can tell a table the run has
since replaced with other merges' from one its run still needs.

A job that evaluates a batch of samples (the design's, a round's, the validation grid's) is kept sample by sample
too: each sample's key is the job's without what picks the batch (its coefficients, a round's table, the batch's
index and size) plus the sample's name and coefficients, and `.cache/samples/<key>.txt` names the kept table that
holds its rows. A job of another batching (`evaluation.samples_per_job`, `validation.batch`) whose own key is not
kept evaluates only the samples without such a note (SampleReuse: its engine's evaluate gives the kept rows back).
Each of those samples is noted by its merge as well (`.cache/merges/<key>.txt`: the kept table and the sample's name;
the key is the job's without its rule, batching and class scores, plus the coefficients), so the chosen merge's
evaluation (`evaluate_selected`), where the choice is a measured point, takes that point's rows (ChosenReuse).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from mapmerge.io import RUN_LOCK, TEMP_SUFFIX, atomic_path, config_hash, file_hash
from mapmerge.run import runlock
from mapmerge.run.registry import READS

if TYPE_CHECKING:
    import pandas as pd

FOLDER = Path(".cache") / "evaluations"
SAMPLES = Path(".cache") / "samples"  # <sample key>.txt: the name of the kept table that holds the sample's rows
MERGES = Path(".cache") / "merges"  # <merge key>.txt: the kept table that holds a merge's rows, and the sample's name
HASHES = Path(".cache") / "hashes"  # content_hash's notes
MEMO_BYTES = 64 << 20  # smaller files are hashed every time (under 0.1 s each)
PLACE = ".place"  # beside <key>.parquet: the job's table it was kept from or restored to, under the results folder
NOTES = ".notes"  # beside a batch job's <key>.parquet: its samples' and merges' notes, pointed at it again on restore
PRIMARY = "examples"  # the output every evaluation job writes: its per-example rows, kept under the job's key
POINTS = ("samples", "choice")  # inputs that are tables of points: only their names and coefficients count
UNKEYED = ("threads",)  # values that do not change an evaluation's table
LOCATIONS = "python_path"  # a param of folders the key holds by their number only (_placeless)
PLACED = "folder"  # what stands for each of them
# jobs that evaluate a batch of a group's samples, each merge its coefficients, and what picks their batch: a sample's
# rows are kept by its own key too, so a job of another batching (evaluation.samples_per_job, validation.batch) that
# holds it takes them back
BATCH_JOBS = ("evaluate_sample", "evaluate_round", "validate_grid")
MERGE_JOBS = ("evaluate_sample", "evaluate_round")  # a group's own evaluations: their samples are noted by merge too
BATCHING = ("coefficients", "index", "size", "samples")  # a batch's params and args, a round's table of points
CHOSEN = "evaluate_selected"  # the chosen merge's evaluation: a measured point's rows where the choice is one
CLASS_SCORES = ("scores", "target")  # the columns the class scores add (surrogate.scores); CHOSEN's job keeps none
PENDING = "_mapmerge_pending_build"  # an engine's constructor arguments, kept until a sample must be evaluated
logger = logging.getLogger("mapmerge")


def _points_digest(path: str | os.PathLike) -> str:
    """The hash (io.config_hash) of a table's `sample` and c_* columns, as written."""
    table = pq.read_table(path)
    columns = [c for c in table.column_names if c == "sample" or c.startswith("c_")]
    return config_hash({c: table.column(c).to_pylist() for c in columns})


def content_hash(path: str | os.PathLike, memo: Path | None = None, hashes: dict[str, str] | None = None) -> str:
    """io.file_hash of a file; one of MEMO_BYTES or more remembered under folder `memo` by its path, inode, size
    and mtime (a write that long ends in a tick of its own): a language model's task vectors are read once for
    all the jobs that evaluate with them, not once more per job. hashes: the digests one job has taken so far, by
    path (its keys, its samples' and its merges', hash the same inputs), filled in."""
    if hashes is None:
        return _content_hash(path, memo)
    name = os.fspath(path)
    if name not in hashes:
        hashes[name] = _content_hash(path, memo)
    return hashes[name]


def _content_hash(path: str | os.PathLike, memo: Path | None) -> str:
    stat = os.stat(path)
    if memo is None or stat.st_size < MEMO_BYTES:
        return file_hash(path)
    ident = _identity(path, stat)
    note = memo / f"{config_hash(ident)}.txt"
    try:
        return note.read_text().split("\n")[0]
    except OSError:
        digest = file_hash(path)
        _put(note, lambda tmp: tmp.write_text(f"{digest}\n{ident}\n"))  # the identity: for prune
        return digest


def _identity(path: str | os.PathLike, stat: os.stat_result | None = None) -> str:
    """What a hash note remembers a file by: its real path, inode, size and mtime (`stat`: the file's, if taken)."""
    stat = stat or os.stat(path)
    return f"{os.path.realpath(path)}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}"


def _stale_note(note: Path) -> bool:
    """Whether a hash note can no longer answer: its file is gone or changed (another inode, size or mtime), or
    the note does not say which file it is of (written before notes did; the next job hashes that file again)."""
    try:
        lines = note.read_text().split("\n")
    except OSError:
        return True
    ident = lines[1] if len(lines) > 1 else ""
    try:
        return not ident or _identity(ident.rsplit("|", 3)[0]) != ident
    except OSError:  # the file is gone
        return True


def _digest(name: str, value: Any, memo: Path | None, hashes: dict[str, str] | None, legacy: bool = False) -> Any:
    if isinstance(value, Mapping):
        return {key: _digest(name, path, memo, hashes, legacy) for key, path in value.items()}
    if isinstance(value, list | tuple):
        return [_digest(name, path, memo, hashes, legacy) for path in value]
    if name in POINTS:
        return _points_digest(value)
    if str(value).endswith(".parquet") and not legacy:
        return table_digest(value)
    return content_hash(value, memo, hashes)


def table_digest(path: str | os.PathLike) -> str:
    """The hash of a Parquet table's data, not of its file: the provenance in its metadata (the config's hash, its
    inputs') does not change what an evaluation gives (nested MAP's level plan, rewritten with the same groups after a
    preference change), nor the front a merge of `mapmerge select` was picked from (runfolder.stale_selections)."""
    table = pq.read_table(path)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.remove_metadata()) as stream:
        stream.write_table(table.replace_schema_metadata(None))
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


# the keys of before, newest first, which run.job looks up where the key finds nothing, so that an upgrade evaluates
# nothing again: "folders" (before 2026-12-08: a folder in a param as written, the files the jobs read in the order of
# their paths, the reference models' key with the merge operator), "paths" (before 2026-12-07: the paths, the files'
# bytes, no order)
EARLIER_KEYS = ("folders", "paths")
UNMERGED = ("evaluate_reference",)  # rules whose models are not merged: the merge operator is not in their key
OPERATOR_PARAMS = ("merge_operator", "merge_seed")  # mapmerge.run.config.stage_config's `evaluate`


def key(
    spec: Mapping[str, Any], memo: Path | None = None, hashes: dict[str, str] | None = None, earlier: str | None = None
) -> str:
    """The cache key of an evaluation job's spec (mapmerge.run.job): what its table depends on, not where its files
    lie (_placeless; the files it reads that no rule names, READS, by their digests alone), nor the provenance of its
    Parquet inputs (table_digest), nor, for the reference models, the merge operator (UNMERGED); with the order of
    its inputs' mappings (the tasks: a table's rows follow it). memo: a folder remembering the files' hashes; hashes:
    the job's digests so far (content_hash). earlier: one of EARLIER_KEYS, the key of before."""
    legacy = earlier == "paths"
    inputs = spec.get("inputs") or {}
    digests = {name: _digest(name, value, memo, hashes, legacy) for name, value in sorted(inputs.items())}
    keyed = {**digests, READS: sorted(digests[READS])} if READS in digests and earlier is None else digests
    args = {k: v for k, v in (spec.get("args") or {}).items() if k not in UNKEYED}
    params = spec.get("params") or {}
    if legacy:
        return config_hash({"rule": spec["rule"], "params": params, "args": args, "inputs": digests})
    if spec["rule"] in UNMERGED and earlier is None:
        stage = {k: v for k, v in (params.get("stage") or {}).items() if k not in OPERATOR_PARAMS}
        params = {**params, "stage": stage}
    files = {
        os.path.abspath(path): digest
        for name, value in inputs.items()
        if name not in POINTS
        for path, digest in zip(_flat(value), _flat(digests[name]))
    }
    blob = {
        "rule": spec["rule"],
        "params": _placeless(params, files, folders=earlier is None),
        "args": args,
        "inputs": keyed,
        "order": {name: list(value) for name, value in sorted(inputs.items()) if isinstance(value, Mapping)},
    }
    return config_hash(blob)


def _flat(value: Any) -> list[Any]:
    """An input's paths (or their digests), as _digest walks them."""
    if isinstance(value, Mapping):
        return [x for v in value.values() for x in _flat(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _flat(v)]
    return [value]


def _placeless(value: Any, files: Mapping[str, str], folders: bool = True) -> Any:
    """A job's params without where its files lie, so that a model's folder moved (the same bytes) keeps every key:
    `python_path`'s folders (what the jobs run from them is in the code fingerprint, `code`, and what they read there
    among the inputs) by their number; an absolute path of one of the job's input files (`files`: by absolute
    path, its digest) by the file's digest; with `folders`, one of a folder holding some of them (a transformers
    model's, its tokenizer's) by theirs, with their names under it (what the job reads there is among its inputs:
    READS). Any other path stays as written: it names what the key cannot see."""
    if isinstance(value, Mapping):
        return {
            k: [PLACED] * len(v) if k == LOCATIONS and isinstance(v, list) else _placeless(v, files, folders)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_placeless(v, files, folders) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = os.path.normpath(value)
        if path in files:
            return files[path]
        inside = sorted((os.path.relpath(f, path), d) for f, d in files.items() if f.startswith(path + os.sep))
        return config_hash(inside) if folders and inside else value
    return value


@dataclass
class _KeptRows:
    """Rows of kept tables, each table read once (whole, checksums verified)."""

    results: Path
    tables: dict[Path, pa.Table] = field(default_factory=dict)  # the kept tables read so far

    def of(self, note: Path, sample: str | None = None) -> tuple[pd.DataFrame, str, Path] | None:
        """The rows of the sample a note names (its first line the kept table, its second, if any, the sample's
        name, else `sample`), the sample's name and the table; None without a note, a table or the sample's rows."""
        import pyarrow.compute as pc  # an evaluation job's import, not the driver's

        try:
            name, *named = note.read_text().split()
            kept = self.results / FOLDER / name
            if kept not in self.tables:
                self.tables[kept] = pq.read_table(kept, page_checksum_verification=True)
        except (OSError, ValueError):  # no note, no table, or a damaged one: evaluate
            return None
        sample = named[0] if named else sample
        table = self.tables[kept]
        rows = table.filter(pc.equal(table["sample"], sample))
        return (rows.to_pandas(), sample, kept) if rows.num_rows else None


def _results_of(kept: Path) -> Path:
    """The results folder of a kept table (<results>/.cache/evaluations/<key>.parquet)."""
    return kept.parent.parent.parent


def _point_notes(kept: Path, lines: Sequence[str]) -> None:
    """Point at `kept` each note a line names (under the results folder; a merge's note with its sample's name)."""
    for line in lines:
        note, *sample = line.split()
        text = "".join(f"{x}\n" for x in [kept.name, *sample])
        _put(_results_of(kept) / note, lambda tmp, text=text: tmp.write_text(text))


def renote(kept: Path) -> None:
    """Point the notes listed beside a batch job's kept table (SampleReuse.note) at it: when the job's table is
    restored whole, its samples are the run's again, wherever their notes pointed meanwhile (another batching's
    tables, which prune may drop). A table kept before such lists has none."""
    try:
        lines = kept.with_suffix(NOTES).read_text().splitlines()
    except OSError:
        return
    try:
        _point_notes(kept, lines)
    except OSError as exc:  # a later rebatching evaluates those samples again
        logger.warning("the samples' notes of %s were not written (%s)", kept, exc)


def _merge_note(results: Path, base: str, coefficients: Sequence[float]) -> Path:
    """The note of a group's evaluation of the merge `coefficients` (base: _merge_key)."""
    return results / MERGES / f"{config_hash([base, [float(c) for c in coefficients]])}.txt"


@dataclass
class SampleReuse(_KeptRows):
    """One batch job's samples in the evaluation cache: each sample's rows kept by its own key (the job's key
    without its batching, BATCHING, plus the sample's name and coefficients), noted in `results`/SAMPLES with the
    kept table that holds them, and by its merge (MERGES, for ChosenReuse). `rows` gives a sample's rows back where a
    note and its table are there; `noted` lists the notes of every sample the job has, to be pointed at its own
    kept table once the job is kept."""

    base: str = ""  # the job's key without its batching
    merge: str = ""  # _merge_key: the key of the group's evaluation of a merge, whatever job evaluates it
    noted: list[Path] = field(default_factory=list)
    merges: list[tuple[Path, str]] = field(default_factory=list)  # each sample's merge note, and its name

    def rows(self, sample: str, coefficients: Sequence[float]) -> pd.DataFrame | None:
        """The sample's rows from the cache, or None."""
        note = self.results / SAMPLES / f"{config_hash([self.base, sample, [float(c) for c in coefficients]])}.txt"
        self.noted.append(note)
        if self.merge:  # a group's own evaluation (MERGE_JOBS)
            self.merges.append((_merge_note(self.results, self.merge, coefficients), sample))
        found = self.of(note, sample)
        if found is None:
            return None
        logger.info("took %s from the evaluation cache (%s): the same merge, files, params and code", sample, found[2])
        return found[0]

    def note(self, kept: Path) -> None:
        """Point the notes of the job's samples, and of their merges, at its kept table `kept`, and list them beside
        it (NOTES) for `renote`."""
        lines = [str(note.relative_to(self.results)) for note in self.noted]
        lines += [f"{note.relative_to(self.results)} {sample}" for note, sample in self.merges]
        _put(kept.with_suffix(NOTES), lambda tmp: tmp.write_text("".join(f"{line}\n" for line in lines)))
        _point_notes(kept, lines)


@dataclass
class ChosenReuse(_KeptRows):
    """The chosen merge's evaluation (CHOSEN): where the choice is a measured point (a refinement round's, as after
    refinement it always is), the rows of the group's evaluation of that merge, its class scores dropped and its
    sample named as the choice's job names it."""

    merge: str = ""  # _merge_key of the job

    def rows(self, sample: str, coefficients: Sequence[float]) -> pd.DataFrame | None:
        """The rows of the group's evaluation of the same merge, as this job would write them, or None."""
        found = self.of(_merge_note(self.results, self.merge, coefficients))
        if found is None:
            return None
        rows, source, kept = found
        logger.info(
            "took the chosen merge's rows from its evaluation as %s (%s): the same merge, files, params and code",
            source,
            kept,
        )
        return rows.drop(columns=[c for c in CLASS_SCORES if c in rows]).assign(sample=sample)

    def note(self, kept: Path) -> None:
        """Nothing to note: the chosen merge is kept by its job's key alone."""


def _merge_key(spec: Mapping[str, Any], memo: Path, hashes: dict[str, str] | None) -> str:
    """The key of a group's evaluation of one merge, whatever job evaluates it: the job's key without its rule,
    batching, on_error (a kept table records no failure) and class scores (surrogate.scores adds columns only)."""
    params = {k: v for k, v in (spec.get("params") or {}).items() if k not in BATCHING}
    params["stage"] = {k: v for k, v in (params.get("stage") or {}).items() if k != "scores"}
    return key(
        {
            "rule": "merge",
            "params": params,
            "args": {k: v for k, v in (spec.get("args") or {}).items() if k not in (*BATCHING, "on_error")},
            "inputs": {k: v for k, v in (spec.get("inputs") or {}).items() if k not in (*BATCHING, *POINTS)},
        },
        memo,
        hashes,
    )


def sample_reuse(
    spec: Mapping[str, Any], kept: Mapping[str, Path], hashes: dict[str, str] | None = None
) -> SampleReuse | ChosenReuse | None:
    """The sample cache of a batch job (BATCH_JOBS) or of the chosen merge's (CHOSEN) whose tables the cache keeps
    (`kept`: entries), else None; `hashes` as for content_hash."""
    if spec["rule"] not in (*BATCH_JOBS, CHOSEN):
        return None
    folder = _results_of(kept[PRIMARY])
    merge = _merge_key(spec, folder / HASHES, hashes) if spec["rule"] in (*MERGE_JOBS, CHOSEN) else ""
    if spec["rule"] == CHOSEN:
        return ChosenReuse(folder, merge=merge)
    unbatched = {
        "rule": spec["rule"],
        "params": {k: v for k, v in (spec.get("params") or {}).items() if k not in BATCHING},
        "args": {k: v for k, v in (spec.get("args") or {}).items() if k not in BATCHING},
        "inputs": {k: v for k, v in (spec.get("inputs") or {}).items() if k not in BATCHING},
    }
    return SampleReuse(folder, base=key(unbatched, folder / HASHES, hashes), merge=merge)


@contextmanager
def reusing(reuse: SampleReuse | ChosenReuse | None) -> Iterator[None]:
    """While the job's stage runs, its engine evaluates only the samples `reuse` has no rows of, and is built (the
    model's files loaded, the evaluators made) only when the first of those comes: a job whose every sample is kept
    loads nothing."""
    if reuse is None:
        yield
        return
    from mapmerge.tensors.engine import MergeEngine  # deferred: torch, an evaluation job's own import

    build, evaluate = MergeEngine.__init__, MergeEngine.evaluate

    def defer(engine: MergeEngine, *args: Any, **kwargs: Any) -> None:
        engine.__dict__[PENDING] = (args, kwargs)

    def evaluate_or_reuse(
        engine: MergeEngine, coefficients: Sequence[float], sample: str, on_error: str = "fail"
    ) -> pd.DataFrame:
        rows = reuse.rows(sample, coefficients)
        if rows is not None:
            return rows
        if PENDING in engine.__dict__:
            args, kwargs = engine.__dict__.pop(PENDING)
            build(engine, *args, **kwargs)
        return evaluate(engine, coefficients, sample, on_error)

    MergeEngine.__init__, MergeEngine.evaluate = defer, evaluate_or_reuse
    try:
        yield
    finally:
        MergeEngine.__init__, MergeEngine.evaluate = build, evaluate


def results_folder(path: str | os.PathLike) -> Path | None:
    """The results folder (the one holding a driver's lock file) that `path` lies in, if any."""
    return next((p for p in Path(path).resolve().parents if (p / RUN_LOCK).exists()), None)


def entries(
    spec: Mapping[str, Any], hashes: dict[str, str] | None = None, earlier: str | None = None
) -> dict[str, Path] | None:
    """Where the tables of job `spec` are kept, by output name: its `examples` under its key, each other output
    (the reference models' metrics, the validation front's points) under a key of its own derived from it. None
    where the job writes no `examples` or an output that is not one Parquet table, where it lies in no results
    folder, or where one of its inputs does not read (the stage then says which, with the way out). `hashes` as
    for content_hash."""
    outputs = spec.get("outputs") or {}
    if PRIMARY not in outputs or not all(isinstance(p, str) and p.endswith(".parquet") for p in outputs.values()):
        return None
    folder = results_folder(outputs[PRIMARY])
    if folder is None:
        return None
    try:
        base = key(spec, folder / HASHES, hashes, earlier)
    except (OSError, ValueError):  # pyarrow's errors are these too
        return None
    return {
        name: folder / FOLDER / f"{base if name == PRIMARY else config_hash([base, name])}.parquet" for name in outputs
    }


def restore(kept: Mapping[str, Path], outputs: Mapping[str, str | os.PathLike]) -> bool:
    """Copy every kept table to its output (each atomically) if all are there and read whole; a damaged one is
    dropped, and nothing is copied."""
    if not all(path.is_file() for path in kept.values()):
        return False
    for path in kept.values():
        try:
            pq.read_table(path, page_checksum_verification=True)
        except (OSError, ValueError) as exc:  # damaged: evaluate again
            logger.warning("the evaluation cache's %s is damaged (%s): evaluating again", path, exc)
            for stale in (path, path.with_suffix(PLACE), path.with_suffix(NOTES)):
                stale.unlink(missing_ok=True)
            return False
    for name, path in kept.items():
        with atomic_path(outputs[name]) as tmp:
            shutil.copyfile(path, tmp)
        _note_place(path, outputs[name])
        logger.info(
            "restored %s from the evaluation cache (%s): the same merges, files, params and code", outputs[name], path
        )
    return True


def keep(outputs: Mapping[str, str | os.PathLike], kept: Mapping[str, Path]) -> bool:
    """Copy a finished job's tables to their places in the cache (each atomically), unless one records a failure.

    Copies, not hard links: a table damaged in place later (a disk fault, an edit) leaves the kept one whole."""
    for output in outputs.values():
        if "error" in pq.read_schema(output).names:
            errors = pq.read_table(output, columns=["error"]).column(0)
            if errors.null_count < len(errors):
                return False
    for name, path in kept.items():
        _put(path, lambda tmp, output=outputs[name]: shutil.copyfile(output, tmp))
        _note_place(path, outputs[name])
    return True


def _note_place(kept: Path, output: str | os.PathLike) -> None:
    """Write beside a kept table where its job's table lies, relative to the results folder holding the cache. Not
    written (a full disk): prune keeps the table as unplaced."""
    results = _results_of(kept)
    place = os.path.relpath(Path(output).resolve(), results.resolve())
    try:
        _put(kept.with_suffix(PLACE), lambda tmp: tmp.write_text(place))
    except OSError as exc:
        logger.warning("the evaluation cache's place of %s was not written (%s)", kept, exc)


@dataclass
class Pruning:
    """What `prune` found in a results folder's evaluation cache: the kept tables it drops (their jobs' tables now
    hold other merges'), and those it keeps because the run may need them (per reason); sizes in bytes."""

    dropped: list[Path] = field(default_factory=list)
    kept: dict[str, list[Path]] = field(default_factory=dict)
    notes: list[Path] = field(default_factory=list)  # the hash notes it drops: of files since changed or gone
    temporary: list[Path] = field(default_factory=list)  # stopped jobs' temporary files under .cache/, which it removes
    sizes: dict[Path, int] = field(default_factory=dict)  # as found, before any was dropped

    def size(self, paths: list[Path]) -> int:
        return sum(self.sizes[p] for p in paths)


KEEP_REASONS = {
    "in use": "the run's table is the same",
    "missing": "the run's table is missing (an unfinished or interrupted run may need it)",
    "unreadable": "the run's table does not read (the kept one may be its only good copy)",
    "evaluated again": "the run's table is the same evaluation done again, to other bytes (a GPU's nondeterminism)",
    "unplaced": "kept before mapmerge noted the places of kept tables",
}


def prune(results: Path, dry_run: bool = False, gone: Collection[Path] = ()) -> Pruning:
    """Drop the kept tables of `results` whose job's table now holds other merges' results (a setting changed since,
    and the job evaluated again), or is among `gone` (job tables of an earlier setting that the caller removes):
    those of settings the run no longer has. A kept table whose job's table is the same, missing, unreadable or the
    same evaluation done again to other bytes (its provenance the same) stays, and so does one without a noted
    place. Leftover temporary files, places and lists of notes without their table, samples' and merges' notes
    (SampleReuse) whose table is gone and the hash notes of files since changed or gone (`notes`) go too. The
    caller holds the run's lock (no driver may write meanwhile)."""
    folder = results / FOLDER
    found = Pruning(kept={reason: [] for reason in KEEP_REASONS})
    found.notes = [note for note in sorted((results / HASHES).glob("*.txt")) if _stale_note(note)]
    found.temporary = runlock.temporary_files(folder.parent)
    removed = {Path(path).resolve() for path in gone}
    for kept in sorted(folder.glob("*.parquet")):
        found.sizes[kept] = kept.stat().st_size
        reason = _needed(results, kept, removed)
        if reason is None:
            found.dropped.append(kept)
        else:
            found.kept[reason].append(kept)
    if dry_run:
        return found
    for kept in found.dropped:
        kept.unlink()
        kept.with_suffix(PLACE).unlink(missing_ok=True)
        kept.with_suffix(NOTES).unlink(missing_ok=True)
    for note in found.notes:
        note.unlink(missing_ok=True)
    for place in [*folder.glob(f"*{PLACE}"), *folder.glob(f"*{NOTES}")]:
        if not place.with_suffix(".parquet").exists():
            place.unlink()
    for note in [*(results / SAMPLES).glob("*.txt"), *(results / MERGES).glob("*.txt")]:  # notes of tables gone
        if not (folder / (note.read_text().split() or [""])[0]).is_file():
            note.unlink()
    for tmp in found.temporary:
        tmp.unlink()
    return found


def _needed(results: Path, kept: Path, removed: set[Path]) -> str | None:
    """Why the run may still need a kept table (a key of KEEP_REASONS), or None when its job's table is another or
    among `removed` (resolved paths)."""
    try:
        place = results / kept.with_suffix(PLACE).read_text()
    except OSError:
        return "unplaced"
    if place.resolve() in removed:
        return None
    if not place.is_file():
        return "missing"
    if place.stat().st_size == kept.stat().st_size and file_hash(place) == file_hash(kept):
        return "in use"
    try:
        pq.read_table(place, page_checksum_verification=True)
    except (OSError, ValueError):  # pyarrow's errors are these too
        return "unreadable"
    again = _provenance(place)
    return "evaluated again" if again is not None and again == _provenance(kept) else None


def _provenance(table: Path) -> dict[bytes, bytes] | None:
    """A table's provenance (io.provenance: its stage, version, params with their code fingerprint and the
    coefficients evaluated, its input files' hashes): equal for two evaluations of the same job; None if unreadable."""
    try:
        metadata = pq.read_schema(table).metadata or {}
    except (OSError, ValueError):
        return None
    return {k: v for k, v in metadata.items() if k.startswith(b"mapmerge.")} or None


def _put(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` through a temporary file beside it and a rename. Not io.atomic_path: a job that stops after
    its stage (its driver gone) deletes its outputs, and the cache keeps what it finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
