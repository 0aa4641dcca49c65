"""The run's merge rebuilt outside the workflow (`mapmerge select`, `mapmerge export`): its operator, coefficients
and seed from merged.safetensors' header, the members' task vectors, and the pretrained checkpoint, found and checked.

The pretrained checkpoint: RESULTS/checkpoints/ for the built-in benchmark (benchmark.parquet); a user model's is not
kept in the run folder (its artifacts record only file names and hashes), so it is given with --pretrained, and
checked against the recorded hash (pretrained_record, check_pretrained) or, where the records cannot vouch for it, by
merging the run's own choice from it (check_reproduces), before anything is written. torch is imported only where a
checkpoint is read.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapmerge.adapters import hub
from mapmerge.adapters.transformers import weights_file
from mapmerge.errors import ConfigError
from mapmerge.io import ArtifactError, file_hash, read_table, table_metadata
from mapmerge.layout import Layout
from mapmerge.tools.runfolder import Scan, UsageError, batch_files


def _decoded(value: object) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def merge_record(merged: Path) -> tuple[dict[str, Any], dict[str, float], Any]:
    """(operator spec, the run's chosen coefficients by member, seed or None) from a merged.safetensors header."""
    from mapmerge.tensors.checkpoints import safetensors_metadata  # deferred: torch

    if not merged.exists():
        raise ArtifactError(f"{merged}: not found; it records the run's merge operator: has merge_group run?")
    try:
        meta = safetensors_metadata(merged)
    except Exception as exc:  # safetensors raises its own error types
        raise ArtifactError(f"{merged}: unreadable safetensors header ({exc})") from exc
    if "operator" not in meta or "coefficients" not in meta:
        raise ArtifactError(
            f"{merged}: its header records no merge operator and coefficients (made by an older mapmerge?); run the workflow again"
        )
    seed = meta.get("seed", meta.get("merge_seed"))
    return _decoded(meta["operator"]), _decoded(meta["coefficients"]), _decoded(seed)


@dataclass
class PretrainedRecord:
    """What a run folder records of its pretrained checkpoint (see pretrained_record)."""

    key: str  # the config key that names it, for messages
    builtin: bool = False  # the built-in benchmark's, kept in RESULTS/checkpoints/
    name: str | None = None  # its file name
    digest: str | None = None  # its mapmerge.io.file_hash; None where the records do not single it out
    source: Path | None = None  # the artifact whose metadata holds the digest
    why: str = ""  # why digest is None, or why it does not vouch for every tensor

    def hint(self, results: Path) -> str:
        """What to give instead of a wrong --pretrained."""
        if self.builtin:
            return f"the run's own is {Layout(results).checkpoints / str(self.name)}: leave --pretrained out"
        return f"give the checkpoint the run merged ({self.key})"


def checkpoint_sources(results: Path) -> list[str]:
    """The fine-tuned checkpoints' file names, from the `source` in each task vector's header."""
    from mapmerge.tensors.checkpoints import safetensors_metadata  # deferred: torch

    names = []
    for path in sorted(Layout(results).task_vectors.glob("*.safetensors")):
        try:
            source = safetensors_metadata(path).get("source")
        except Exception:  # an unreadable vector: select fails on it later, naming it
            continue
        if isinstance(source, str):
            names.append(source)
    return names


def config_key(sources: Sequence[str]) -> str:
    """The config key that names the pretrained checkpoint of a run whose fine-tuned checkpoints are `sources`."""
    from mapmerge.tensors.checkpoints import HF_WEIGHTS  # deferred: torch

    if sources and all(name in HF_WEIGHTS for name in sources):
        return "model.transformers.pretrained"
    if sources and all(name == "finetuned.pt" for name in sources):
        return "model.openclip: {root}/{model_name}/zeroshot.pt"
    return "model.pretrained"


def pretrained_record(results: Path, layout: Scan, group: str) -> PretrainedRecord:
    """The run's pretrained checkpoint as its artifacts record it: file name and hash.

    Every artifact's metadata maps the file names of its inputs to their hashes (mapmerge.io.provenance).
    The built-in benchmark: benchmark.parquet's pretrained row and its hash there. A user model: the
    inputs of reference.parquet (else of the final group's evaluation files): the pretrained checkpoint,
    the task vectors (<task>.safetensors, vector.safetensors), the fine-tuned checkpoints (the `source`
    in each vector's header) and tables; the one name that is none of the others is the pretrained
    checkpoint's. Where its name is also another input's (a transformers run: every directory's weights
    are model.safetensors), the metadata keeps one hash for the name and does not tell whose: digest None.
    """
    sources = checkpoint_sources(results)
    key = config_key(sources)
    paths = Layout(results)
    bench = paths.benchmark
    if bench.exists():
        frame = read_table(bench, columns=["model", "file"])
        rows = frame[frame["model"] == "pretrained"]
        name = str(rows["file"].iloc[0]) if len(rows) else "pretrained.safetensors"
        digest = json.loads(table_metadata(bench).get("mapmerge.inputs", "{}")).get(name)
        return PretrainedRecord(
            "model.pretrained", True, name, digest, bench, "" if digest else f"{bench} records no hash of it"
        )
    records = [paths.reference, paths.reference_examples, *batch_files(paths.evals(group))]
    others = {
        paths.task_vector(t).name for t in [*layout.tasks, *(p.stem for p in paths.task_vectors.glob("*.safetensors"))]
    }
    others |= {paths.group_vector(group).name, *sources}
    for path in records:
        try:
            inputs = json.loads(table_metadata(path).get("mapmerge.inputs", "{}"))
        except (ArtifactError, ValueError):
            continue
        left = [n for n in inputs if n not in others and not n.endswith(".parquet")]
        if len(left) == 1:
            return PretrainedRecord(key, False, left[0], inputs[left[0]], path)
        return PretrainedRecord(
            key,
            why=(
                f"{path.name} keeps its inputs' hashes by file name, and the pretrained checkpoint's is also a fine-tuned one's"
                if not left
                else f"{path.name} does not single it out among its inputs {', '.join(left)}"
            ),
        )
    return PretrainedRecord(key, why="no artifact records its hash")


def pretrained_file(given: Path) -> Path:
    """--pretrained as the checkpoint file the run read: the file, or a transformers directory's weights
    (model.safetensors, or model.safetensors.index.json of a sharded save), as model.transformers resolves them;
    where no file or folder of that spelling exists, a Hugging Face model name's (org/name[@revision]) cached
    snapshot's (mapmerge.adapters.hub)."""
    try:
        given = hub.model_path(str(given), f"--pretrained {given}", Path(given))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if given.is_dir():
        try:
            return weights_file(given, f"--pretrained {given}")
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    if not given.is_file():
        raise UsageError(f"--pretrained {given}: not found")
    return given


def find_pretrained(results: Path, given: Path | None, record: PretrainedRecord) -> tuple[Path, str]:
    """The run's pretrained checkpoint file and where it was found (not yet checked: see check_pretrained)."""
    if given is not None:
        return pretrained_file(given), "--pretrained"
    if record.builtin:
        path = Layout(results).checkpoints / str(record.name)
        if not path.exists():
            raise ArtifactError(
                f"{path}: not found (the built-in benchmark's pretrained checkpoint, see {record.source})"
            )
        return path, "the built-in benchmark's checkpoints/"
    raise UsageError(
        f"{results}: the pretrained checkpoint of a user model is not kept in the run folder "
        f"(its artifacts record only file names and hashes); give it with --pretrained PATH (the experiment's {record.key})"
    )


def check_pretrained(results: Path, path: Path, given: bool, record: PretrainedRecord) -> str | None:
    """Refuse a pretrained checkpoint whose hash is not the one the run recorded, hashed as the run hashed it
    (mapmerge.io.file_hash of the file, of a shard index for a sharded checkpoint).

    Returns how the hash vouched for it, or None where it cannot vouch for every tensor and check_reproduces
    must: the records do not single out its hash (record.why), or the file is a shard index (whose hash does
    not cover its shards). UsageError for a --pretrained file, ArtifactError for the run folder's own (a
    benchmark checkpoint replaced or damaged since the run).
    """
    from mapmerge.tensors.checkpoints import SHARD_INDEX_SUFFIX  # deferred: torch

    if record.digest is None:
        return None
    digest = file_hash(path)
    if digest != record.digest:
        what = f"--pretrained {path}" if given else str(path)
        hint = f"; {record.hint(results)}" if given else "; it was replaced or damaged after the run"
        error = UsageError if given else ArtifactError
        raise error(
            f"{what}: sha256[:16] {digest}, but the run's pretrained checkpoint {record.name} has {record.digest} "
            f"(recorded in {record.source}){hint}"
        )
    if path.name.endswith(SHARD_INDEX_SUFFIX):
        record.why = "the hash of a shard index does not cover its shards"
        return None
    return f"its hash {digest} is the one recorded in {record.source}"


def member_vectors(results: Path, members: Sequence[str], tasks: Sequence[str]) -> dict[str, Path]:
    """Each member's task vector: task_vectors/<task>.safetensors, or a lower group's groups/<g>/vector.safetensors."""
    vectors = {}
    for m in members:
        path = Layout(results).vector(m, list(tasks))
        if not path.exists():
            raise ArtifactError(f"{path}: not found (the task vector of member '{m}')")
        vectors[m] = path
    return vectors


def check_reproduces(
    pretrained: Path,
    vectors: Mapping[str, Path],
    coefficients: Sequence[float],
    operator: Mapping[str, Any],
    seed: int | None,
    merged: Path,
    given: bool,
    hint: str,
    ignore: Collection[str] = (),
) -> None:
    """Merge the run's own choice from `pretrained` and compare every tensor with the run's merged.safetensors.

    For a pretrained checkpoint the run's records cannot vouch for by its hash (see check_pretrained): any
    tensor that differs (the merged ones and the others, which merged.safetensors holds as the pretrained
    ones) makes the merge differ. Reads the checkpoint, the task vectors and merged.safetensors once, one
    tensor at a time. UsageError (ArtifactError for the run folder's own, not `given`) naming the first tensor
    that differs; `hint` says what to give instead. `ignore`: names compared in neither (a transformers model's
    non-persistent buffers, which older transformers saved and newer does not).
    """
    import torch

    from mapmerge.tensors.checkpoints import open_checkpoint  # deferred: torch
    from mapmerge.tensors.lora import member_delta, vector_names  # deferred: with merge_tensor
    from mapmerge.tensors.operators import validate
    from mapmerge.tensors.taskvectors import merge_tensor  # deferred: torch

    spec, members = validate(operator), list(vectors)
    what, error = (f"--pretrained {pretrained}", UsageError) if given else (str(pretrained), ArtifactError)
    with ExitStack() as stack:
        pre = stack.enter_context(open_checkpoint(pretrained))
        stored = stack.enter_context(open_checkpoint(merged))
        readers = [stack.enter_context(open_checkpoint(p)) for p in vectors.values()]
        names = {name for reader in readers for name in vector_names(reader, reader.path)}  # dense or LoRA
        differ = sorted((set(pre.keys()) ^ set(stored.keys())) - set(ignore))
        if differ:
            where = "lacks" if differ[0] in stored else "has"
            raise error(f"{what}: {where} tensor '{differ[0]}', unlike the run's {merged}; {hint}")
        for name in (n for n in pre.keys() if n not in ignore):
            expected = pre.get(name)
            if name in names:
                expected = merge_tensor(
                    spec, members, name, expected, (member_delta(r, name) for r in readers), coefficients, seed
                )
            actual = stored.get(name)
            if expected.shape != actual.shape or not torch.allclose(
                expected.float(), actual.float(), rtol=1e-5, atol=1e-6
            ):
                raise error(
                    f"{what}: tensor '{name}' with the run's task vectors at the run's own coefficients does not "
                    f"give the run's {merged}; {hint}"
                )
