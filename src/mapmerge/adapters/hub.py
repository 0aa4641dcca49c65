"""Hugging Face model names resolved offline to their snapshot folder in the local cache.

A name is `org/name` or `org/name@revision` (a branch, tag or commit hash; default `main`). It is looked up as
transformers' from_pretrained looks it up offline: huggingface_hub's snapshot_download with local_files_only,
in the cache HF_HUB_CACHE names (else HF_HOME/hub, else ~/.cache/huggingface/hub), read from the environment
when the name is resolved. Nothing is downloaded; a name that is not cached is a one-line ConfigError saying how
to fetch it (`hf download org/name`). The snapshot's folder (snapshots/<commit hash>/) is returned as it is: its
files are links into the cache's blobs/, and their names (model.safetensors, config.json) are what counts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mapmerge.errors import ConfigError

# a repository id as the Hub allows it (letters, digits, _ - .; no leading - or .), then an optional @revision
NAME = re.compile(r"^(?P<repo>\w[\w.-]*/\w[\w.-]*)(?:@(?P<revision>\S+))?$")


def is_name(value: str) -> bool:
    """Whether a string is spelled as a Hugging Face model name (org/name, org/name@revision)."""
    return NAME.fullmatch(value) is not None


def cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub.constants finds it, from the environment now."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def model_path(value: str, key: str, path: Path) -> Path:
    """`path` (the value read as a path) where it exists or `value` is not spelled as a name; else the cached
    snapshot of model name `value` (snapshot: ConfigError naming `key` and the absolute path when it is not cached)."""
    return snapshot(value, key, path.resolve()) if not path.exists() and is_name(value) else path


def snapshot(value: str, key: str, path: Path | None = None) -> Path:
    """The cached snapshot folder of model name `value` (see is_name); ConfigError naming `key` when it is not
    cached (`path`: the directory of that spelling that does not exist either, for the message)."""
    match = NAME.fullmatch(value)
    if match is None:
        raise ConfigError(f"{key}: {value!r} is not a Hugging Face model name (org/name or org/name@revision)")
    repo, revision = match["repo"], match["revision"]
    cache = cache_dir()
    fetch = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
    nowhere = f"no directory {path} and " if path is not None else ""
    try:
        from huggingface_hub import snapshot_download  # deferred: only a model name needs huggingface_hub
        from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError
    except ImportError:
        raise ConfigError(
            f"{key}: {value} names a Hugging Face model; finding it in the cache needs huggingface_hub: "
            "pip install 'mapmerge[models]'"
        ) from None
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True))
    except HFValidationError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{key}: {nowhere}not a valid Hugging Face model name {value!r} ({reason})") from None
    except IncompleteSnapshotError:
        raise ConfigError(
            f"{key}: {nowhere}the cached snapshot of {value} in {cache} misses files; fetch it again with `{fetch}`"
        ) from None
    except LocalEntryNotFoundError:
        held = (cache / f"models--{repo.replace('/', '--')}").is_dir()
        what = f"revision {revision or 'main'} of {repo}" if held else repo
        raise ConfigError(
            f"{key}: {nowhere}{what} is not in the Hugging Face cache {cache}; fetch it with `{fetch}` "
            "(the cache: HF_HUB_CACHE, else HF_HOME/hub)"
        ) from None
