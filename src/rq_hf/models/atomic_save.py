"""All-or-nothing folder saves: the one mechanism behind every save of rq-hf.

Every saver (`save_pretrained` of the models and of the pipeline, training checkpoints, the training scripts'
model card, the converter, extracted codes) writes into a hidden *staging* folder beside its target and then
commits it with [`commit`] (or uses [`atomic_save_directory`], which does both):

* target absent: one `rename` puts the staging folder in place;
* target present: a *journal* (`.rq-hf-commit.json`, itself written atomically) lists the entries to replace;
  they are moved into a hidden *retired* folder inside the target and the staged entries are moved in. The
  files that make a folder loadable (`model_index.json`, `config.json`) leave first and come back last, so a
  folder in the middle of a commit never loads as a mix of old and new files. An error during the commit
  (e.g. a permission) moves everything back. A process killed during the commit leaves the journal behind:
  the next save into that folder, or the next `from_pretrained` of it, finishes the commit
  ([`finish_interrupted_commit`]; the new files were complete before the journal was written).

What a commit into an existing folder replaces (`replace`):

* `"model"`: the staged entries, plus the model files of an earlier save that this one does not write
  (weight files and their shard indexes, configs, the component folders named by an earlier
  `model_index.json`). Other entries (`checkpoint-*`, `logs/`, a user's files) stay.
* `"all"`: everything in the folder (training checkpoints, the converter's output).
* `"entries"`: only the staged entries (e.g. a new `README.md`).

Staging and retired folders are named `.<target>.saving-<host>-<pid>-<random>` and
`.<target>.retired-<host>-<pid>-<random>`; the ones a killed process left behind (same host, process gone) are
removed by the next save into the same parent folder. Folders get the usual permissions (the umask). The
guarantees hold against exceptions and killed processes; without `fsync`, not against a power loss.

This file imports only the standard library so that it can be copied next to the weights as flat remote code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import uuid
from typing import Iterable, Iterator

JOURNAL = ".rq-hf-commit.json"
#: The files that make a folder loadable: removed first and installed last by a commit.
DESCRIPTORS = ("model_index.json", "config.json")
_MODEL_FILES = ("model_index.json", "config.json", "generation_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_REPLACE_MODES = ("model", "all", "entries")
_JOURNAL_TMP_RE = re.compile(r"^" + re.escape(JOURNAL) + r"\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)\.tmp$")
_LEFTOVER_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>saving|retired)-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _hidden_name(name: str, kind: str) -> str:
    return f".{name}.{kind}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _split(target: str | os.PathLike) -> tuple[str, str, str]:
    target = os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    return target, parent, name


def new_staging_dir(target: str | os.PathLike) -> str:
    """Create and return an empty staging folder beside `target` (after removing stale leftovers there)."""
    target, parent, name = _split(target)
    if os.path.isfile(target):
        raise ValueError(f"`save_directory` must be a folder, got the file {target!r}.")
    os.makedirs(parent, exist_ok=True)
    remove_stale_leftovers(parent)
    staging = os.path.join(parent, _hidden_name(name, "saving"))
    os.mkdir(staging)  # mode 0o777 & ~umask, unlike tempfile.mkdtemp's 0o700
    return staging


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a folder so that a kill half-way leaves no partial folder under its name: rename, then delete."""
    path, parent, name = _split(path)
    if not os.path.lexists(path):
        return
    retired = os.path.join(parent, _hidden_name(name, "retired"))
    os.rename(path, retired)
    shutil.rmtree(retired, ignore_errors=True)


def _entries_to_retire(target: str, staged: list[str], replace: str) -> list[str]:
    present = [
        e for e in os.listdir(target) if e != JOURNAL and not _LEFTOVER_RE.match(e) and not _JOURNAL_TMP_RE.match(e)
    ]
    if replace == "all":
        return present
    retire = set(staged)
    if replace == "model":
        components = set()
        index_path = os.path.join(target, "model_index.json")
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    index = json.load(f)
                components = {k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
            except (OSError, ValueError, AttributeError):
                pass
        for entry in present:
            is_dir = os.path.isdir(os.path.join(target, entry))
            if (is_dir and entry in components) or (
                not is_dir and (entry in _MODEL_FILES or entry.endswith(_WEIGHT_SUFFIXES))
            ):
                retire.add(entry)
    return [e for e in present if e in retire]


def _descriptor_last(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: (n in DESCRIPTORS, n))


def _write_journal(target: str, journal: dict) -> None:
    tmp = os.path.join(target, f"{JOURNAL}.{_host()}-{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(journal, f)
    os.replace(tmp, os.path.join(target, JOURNAL))


def _read_journal(target: str) -> dict | None:
    path = os.path.join(target, JOURNAL)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _roll_forward(target: str, journal: dict, done: list[tuple[str, str, str]] | None = None) -> None:
    """Carry out (or finish) the moves of `journal`; idempotent. `done` records (kind, name) for a rollback."""
    staging = os.path.join(os.path.dirname(target), journal["staging"])
    retired = os.path.join(target, journal["retired"])
    install = journal["install"]
    os.makedirs(retired, exist_ok=True)
    for name in reversed(_descriptor_last(journal["retire"])):  # descriptors first
        if name in install and not os.path.lexists(os.path.join(staging, name)):
            continue  # already replaced by the new entry
        if os.path.lexists(os.path.join(target, name)):
            os.rename(os.path.join(target, name), os.path.join(retired, name))
            if done is not None:
                done.append(("retired", name))
    for name in _descriptor_last(install):  # descriptors last
        if os.path.lexists(os.path.join(staging, name)):
            os.rename(os.path.join(staging, name), os.path.join(target, name))
            if done is not None:
                done.append(("installed", name))
    os.remove(os.path.join(target, JOURNAL))
    shutil.rmtree(retired, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def _roll_back(target: str, journal: dict, done: list[tuple[str, str]]) -> None:
    staging = os.path.join(os.path.dirname(target), journal["staging"])
    retired = os.path.join(target, journal["retired"])
    for kind, name in reversed(done):
        if kind == "installed":
            os.rename(os.path.join(target, name), os.path.join(staging, name))
        else:
            os.rename(os.path.join(retired, name), os.path.join(target, name))
    os.remove(os.path.join(target, JOURNAL))
    shutil.rmtree(retired, ignore_errors=True)


def finish_interrupted_commit(folder: str | os.PathLike) -> bool:
    """Finish the commit a killed process left in `folder` (see the module docstring); True if there was one.

    Raises `OSError` naming the folder when the commit cannot be finished (e.g. a read-only folder).
    """
    folder = os.path.abspath(os.fspath(folder))
    try:
        journal = _read_journal(folder)
    except (OSError, ValueError) as err:
        raise OSError(f"{folder!r}: unreadable save journal {JOURNAL} ({err}).") from err
    if journal is None:
        return False
    try:
        _roll_forward(folder, journal)
    except OSError as err:
        raise OSError(
            f"{folder!r} holds an interrupted save that could not be finished ({err}). The new files are in "
            f"{journal['staging']!r} beside it, the replaced ones in {journal['retired']!r} inside it."
        ) from err
    return True


def remove_stale_leftovers(parent: str | os.PathLike) -> list[str]:
    """Remove the staging and retired folders that dead processes of this host left in `parent`.

    A staging folder that a pending journal still needs is committed instead. Returns the removed names.
    """
    parent = os.fspath(parent)
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    host = _host()
    for entry in names:
        journal_tmp = _JOURNAL_TMP_RE.match(entry)
        if journal_tmp and journal_tmp["host"] == host and not _process_alive(int(journal_tmp["pid"])):
            os.remove(os.path.join(parent, entry))  # a journal whose writing was cut short: nothing moved yet
            removed.append(entry)
            continue
        match = _LEFTOVER_RE.match(entry)
        if not match or match["host"] != host or _process_alive(int(match["pid"])):
            continue
        if match["kind"] == "saving":
            target = os.path.join(parent, match["name"])
            try:
                journal = _read_journal(target) if os.path.isdir(target) else None
            except (OSError, ValueError):
                continue
            if journal is not None and journal.get("staging") == entry:
                finish_interrupted_commit(target)
                continue
        else:
            try:
                journal = _read_journal(parent)
            except (OSError, ValueError):
                continue
            if journal is not None and journal.get("retired") == entry:
                continue  # part of a pending commit of `parent`
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        removed.append(entry)
    return removed


def commit(staging: str | os.PathLike, target: str | os.PathLike, replace: str = "model") -> None:
    """Move what was written into `staging` to `target`, all or nothing (see the module docstring).

    `staging` is consumed (removed) whether the commit succeeds or fails.
    """
    if replace not in _REPLACE_MODES:
        raise ValueError(f"`replace` must be one of {_REPLACE_MODES}, got {replace!r}.")
    staging = os.path.abspath(os.fspath(staging))
    target, parent, _ = _split(target)
    if os.path.dirname(staging) != parent:
        raise ValueError(f"`staging` must be a folder beside `target` {target!r}, got {staging!r}.")
    try:
        if not os.path.lexists(target):
            try:
                os.rename(staging, target)
                return
            except OSError:  # created meanwhile: commit into it
                if not os.path.isdir(target):
                    raise
        if not os.path.isdir(target):
            raise ValueError(f"`save_directory` must be a folder, got the file {target!r}.")
        finish_interrupted_commit(target)
        remove_stale_leftovers(target)
        staged = sorted(os.listdir(staging))
        journal = {
            "staging": os.path.basename(staging),
            "retired": _hidden_name(os.path.basename(target), "retired"),
            "retire": _entries_to_retire(target, staged, replace),
            "install": staged,
        }
        _write_journal(target, journal)
        done: list[tuple[str, str]] = []
        try:
            _roll_forward(target, journal, done)
        except BaseException:
            _roll_back(target, journal, done)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_save_directory(save_directory: str | os.PathLike, replace: str = "model") -> Iterator[str]:
    """Yield an empty staging folder beside `save_directory`; commit what was written there on success.

    A save that fails or is interrupted leaves an earlier folder at `save_directory` untouched and removes the
    staging folder (a killed one is removed by the next save). `replace` as in [`commit`].
    """
    if replace not in _REPLACE_MODES:
        raise ValueError(f"`replace` must be one of {_REPLACE_MODES}, got {replace!r}.")
    staging = new_staging_dir(save_directory)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit(staging, save_directory, replace=replace)


@contextlib.contextmanager
def atomic_save_file(path: str | os.PathLike) -> Iterator[str]:
    """Yield a path to write the file `path` to; on success it replaces `path` (the folder's other entries stay).

    The same mechanism as [`atomic_save_directory`] (`replace="entries"`): a failed write leaves an earlier file
    at `path` intact.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    with atomic_save_directory(folder, replace="entries") as staging:
        yield os.path.join(staging, name)
