"""Reading and writing model weights: safetensors or torch state dicts, checked on the way in."""

from __future__ import annotations

import ctypes
import json
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mapmerge.io import ArtifactError, atomic_path, recompute_hint
from mapmerge.tensors.hf_prefix import base_model_prefix

METADATA_KEY = "mapmerge"


# safetensors dtype names (header "dtype") -> torch dtypes, for shapes and dtypes without reading data
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class LazyCheckpoint:
    """A checkpoint opened for reading one tensor at a time (a context manager; see open_checkpoint).

    safetensors files are read lazily with safetensors.safe_open: get(name) reads just that tensor,
    with the pread backend (safetensors >= 0.8) so that the bytes read are not kept mapped into the
    process (with mmap, every page read stays in its resident memory until the file is closed); older
    safetensors fall back to mmap, whose pages are the file's page cache (reclaimable, but counted in RSS).
    A torch state dict (.pt and any other suffix) cannot be read tensor by tensor in general (it is
    one pickle), so it is loaded when opened: memory-mapped where the file has the zip format of
    torch >= 1.6 and mmap is True (torch.load mmap=True: pages are read from disk as tensors are
    touched, and are the file's page cache), else whole; save large models as safetensors.
    Errors are ArtifactError with one line naming the file (and the tensor); get() rejects NaN/inf.

    A sharded safetensors checkpoint is read through its index (`*.safetensors.index.json`, the
    `weight_map` names each tensor's shard file), every shard opened lazily the same way. The weights
    of a Hugging Face transformers directory (`model.safetensors` or `model.safetensors.index.json`
    beside a config.json with a model_type) are named as in the model with its head: a base model's
    tensors (saved without transformers' base_model_prefix, e.g. BertModel's `encoder.*`) get the
    prefix (`bert.encoder.*`), so that they line up with a fine-tuned BertForSequenceClassification's.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", mmap: bool = True) -> None:
        self.path = Path(path)
        self.device = device
        self._file: Any = None  # safe_open handle (safetensors)
        self._shards: dict[str, Any] = {}  # stored name -> safe_open handle of its shard (index files)
        self._tensors: dict[str, torch.Tensor] | None = None  # the loaded state dict (torch files)
        if not self.path.exists():
            raise ArtifactError(f"{self.path}: checkpoint not found")
        try:
            if self.path.name.endswith(SHARD_INDEX_SUFFIX):
                self._shards = _open_shards(self.path, device)
                names = list(self._shards)
            elif self.path.suffix == ".safetensors":
                self._file = _safe_open(self.path, device)
                names = getattr(self._file, "offset_keys", self._file.keys)()  # file order, as load_file
            else:
                self._tensors = _torch_load(self.path, device, mmap)
                names = list(self._tensors)
        except ArtifactError:
            raise
        except (SafetensorError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
            raise self._unreadable(exc) from exc
        # canonical name -> the name stored in the file (they differ for a transformers base model)
        self._stored = hf_names(self.path, list(names))
        self._names: list[str] = list(self._stored)
        self._known = set(self._names)

    def _unreadable(self, exc: BaseException) -> ArtifactError:
        detail = " ".join(str(exc).split())  # one line
        return ArtifactError(
            f"{self.path}: unreadable checkpoint ({detail}); if the workflow made it, {recompute_hint(self.path)}"
        )

    def keys(self) -> list[str]:
        """The tensors' names, in file order."""
        return list(self._names)

    def stored_name(self, name: str) -> str:
        """The name a tensor has in the file (differs from `name` for a transformers base model)."""
        return self._stored[name]

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __len__(self) -> int:
        return len(self._names)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor; ArtifactError naming the file and tensor when absent, unreadable or not finite."""
        if name not in self._known:
            raise ArtifactError(f"{self.path}: has no tensor '{name}'")
        if self._tensors is not None:
            tensor = self._tensors[name]
        else:
            handle = self._handle(name)
            try:
                tensor = handle.get_tensor(self._stored[name])
            except (SafetensorError, RuntimeError, OSError) as exc:
                raise self._unreadable(exc) from exc
        _check_finite(self.path, name, tensor)
        return tensor

    def _handle(self, name: str) -> Any:
        """The safe_open handle holding tensor `name`."""
        handle = self._shards.get(self._stored[name]) if self._shards else self._file
        if handle is None:
            raise ArtifactError(f"{self.path}: read after close")
        return handle

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) one at a time, in file order."""
        for name in self._names:
            yield name, self.get(name)

    def meta(self) -> dict[str, torch.Tensor]:
        """Every tensor as a 'meta' tensor (shape and dtype, no data): for checks before reading."""
        if self._tensors is not None:
            return {n: t.to("meta") for n, t in self._tensors.items()}
        out = {}
        for name in self._names:
            view = self._handle(name).get_slice(self._stored[name])
            dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
            if dtype is None:  # a rare dtype: read the tensor to learn it
                out[name] = self.get(name).to("meta")
            else:
                out[name] = torch.empty(view.get_shape(), dtype=dtype, device="meta")
        return out

    def close(self) -> None:
        """Release the file (safetensors) or the loaded tensors (torch files)."""
        for handle in {id(h): h for h in [self._file, *self._shards.values()] if h is not None}.values():
            handle.__exit__(None, None, None)
        self._file = None
        self._shards = {}
        self._tensors = None

    def __enter__(self) -> LazyCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike, device: str = "cpu", mmap: bool = True) -> LazyCheckpoint:
    """Open a checkpoint for reading tensor by tensor: `with open_checkpoint(p) as ckpt: ckpt.get(name)`.

    mmap: memory-map a torch state dict file (see LazyCheckpoint); no effect on safetensors files.
    """
    return LazyCheckpoint(path, device, mmap)


SHARD_INDEX_SUFFIX = ".safetensors.index.json"
HF_WEIGHTS = ("model.safetensors", "model" + SHARD_INDEX_SUFFIX)  # a transformers directory's weights


def _open_shards(index: Path, device: str) -> dict[str, Any]:
    """Stored tensor name -> the safe_open handle of its shard, from a sharded checkpoint's index."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{index}: not a safetensors index (a JSON object with a weight_map)") from exc
    handles: dict[str, Any] = {}
    shards = {}
    try:
        for name, shard in weight_map.items():
            if shard not in handles:
                if not (index.parent / shard).is_file():
                    raise ArtifactError(f"{index}: shard {shard} not found (tensor '{name}')")
                handles[shard] = _safe_open(index.parent / shard, device)
            shards[name] = handles[shard]
    except BaseException:
        for handle in handles.values():
            handle.__exit__(None, None, None)
        raise
    return shards


def hf_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The config.json of the transformers directory whose weights `path` is, or None for other files."""
    path = Path(path)
    if path.name not in HF_WEIGHTS or not (path.parent / "config.json").is_file():
        return None
    try:
        config = json.loads((path.parent / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path.parent / 'config.json'}: not valid JSON ({exc})") from exc
    return config if isinstance(config, dict) and "model_type" in config else None


def hf_names(path: Path, stored: list[str]) -> dict[str, str]:
    """Canonical -> stored tensor names: identity, except a transformers base model's gain base_model_prefix."""
    config = hf_config(path)
    prefix = base_model_prefix(config) if config is not None else ""
    if not prefix or any(name.startswith(f"{prefix}.") for name in stored):
        return {name: name for name in stored}
    return {f"{prefix}.{name}": name for name in stored}


def _safe_open(path: Path, device: str) -> Any:
    try:
        handle = safe_open(str(path), framework="pt", device=device, backend="pread")
    except TypeError:  # safetensors < 0.8: no backend, memory-mapped
        handle = safe_open(str(path), framework="pt", device=device)
    return handle.__enter__()


def _torch_load(path: Path, device: str, mmap: bool) -> dict[str, torch.Tensor]:
    """A torch file's tensors: a state dict, {'state_dict': ...}, or a whole module (torch.save(module)).

    Always weights_only, so nothing in the file runs: a pickled module's classes are neither imported
    nor called; each object is read as a _PickledObject holding the attributes it was saved with, and
    the module's state dict is gathered from them (parameters and persistent buffers, named as
    nn.Module.state_dict names them).
    """
    try:
        obj = _torch_load_weights(path, device, mmap)
    except pickle.UnpicklingError as refused:  # a global outside torch's weights-only allowlist
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except ValueError:  # not the zip format of torch >= 1.6
            raise refused from None
        with torch.serialization.safe_globals([(_PickledObject, name) for name in unsafe]):
            obj = _torch_load_weights(path, device, mmap)
        if isinstance(obj, _PickledObject) and isinstance(obj.__dict__.get("_parameters"), Mapping):
            obj = _pickled_state_dict(obj)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path}: not a state dict of tensors")
    return dict(obj)


def _torch_load_weights(path: Path, device: str, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location=device, weights_only=True, mmap=True)
        except RuntimeError:  # not the zip format of torch >= 1.6 (mmap needs it), or unreadable: load whole
            pass
    return torch.load(path, map_location=device, weights_only=True)


class _PickledObject:
    """Stands in for every class a pickled module names: takes any arguments, keeps its saved attributes."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _PickledObject:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            state = {**(state[0] or {}), **(state[1] or {})}  # (__dict__, slots)
        if isinstance(state, dict):
            self.__dict__.update(state)


def _pickled_state_dict(module: _PickledObject, prefix: str = "") -> dict[str, Any]:
    """nn.Module.state_dict of a pickled module read as _PickledObjects: parameters, persistent buffers."""
    attrs = module.__dict__
    non_persistent = attrs.get("_non_persistent_buffers_set") or set()
    out = {prefix + n: t.detach() for n, t in (attrs.get("_parameters") or {}).items() if isinstance(t, torch.Tensor)}
    out.update(
        (prefix + n, t.detach())
        for n, t in (attrs.get("_buffers") or {}).items()
        if isinstance(t, torch.Tensor) and n not in non_persistent
    )
    for name, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, _PickledObject):
            out.update(_pickled_state_dict(child, f"{prefix}{name}."))
    return out


def load_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a checkpoint (safetensors, or a torch state dict) as a flat name -> tensor dict.

    Raises ArtifactError naming the file when it is missing, unreadable, not a state dict,
    or holds NaN/inf in a floating-point tensor. To hold one tensor at a time, use open_checkpoint.
    """
    with open_checkpoint(path, device, mmap=False) as ckpt:  # tensors that own their memory
        return dict(ckpt.items())


def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()
TRIM_BYTES = 1 << 20


def release_freed_memory(nbytes: int) -> None:
    """After a step that freed tensors of about nbytes each: hand the freed heap memory back to the OS.

    glibc keeps freed blocks of up to 32 MB in the heap, so a loop that reads, merges and frees a
    tensor per step grows resident memory by the holes left between the tensors it keeps;
    malloc_trim releases them. For tensors of at least TRIM_BYTES; a no-op without glibc.
    """
    if _MALLOC_TRIM is not None and nbytes >= TRIM_BYTES:
        _MALLOC_TRIM(0)


def _check_finite(path: Path, name: str, tensor: torch.Tensor) -> None:
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ArtifactError(f"{path}: tensor '{name}' holds NaN or inf")


def verify_safetensors(path: str | os.PathLike) -> None:
    """Read every tensor of a safetensors file, one at a time; ArtifactError when one is unreadable or not finite."""
    path = Path(path)
    try:
        fh = _safe_open(path, "cpu")
        try:
            for name in fh.keys():
                _check_finite(path, name, fh.get_tensor(name))
        finally:
            fh.__exit__(None, None, None)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ArtifactError(f"{path}: unreadable safetensors ({exc})") from exc


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save tensors as safetensors atomically (contiguous CPU copies), with metadata.

    The metadata goes into one header entry as sorted JSON: safetensors writes several entries in
    random order, and the same tensors must give the same bytes.
    """
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {METADATA_KEY: json.dumps(dict(metadata), sort_keys=True, default=str)} if metadata else None
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=header)
    return Path(path)


def safetensors_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The metadata that save_safetensors stored in a file's header."""
    with safe_open(str(path), framework="pt") as fh:
        return json.loads((fh.metadata() or {}).get(METADATA_KEY, "{}"))
