"""Pushing an export to the Hugging Face Hub: :func:`upload_export` and :func:`push_to_hub`.

Pushing needs a token (``token=``, ``HF_TOKEN`` or a saved ``hf auth login``); it is checked before
anything is written or sent. Before any request the export is checked: ``config.json`` and
``model.safetensors`` present, no pickle, **no symlink or other non-regular file** (a link could
carry a file from outside the export), and the recorded sha256 of the weights match. A failed
upload never deletes the export and says how to retry it (``dcls-zoo push <dir> --repo-id ...``).
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import PushError
from ..export_format import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, read_export_config, verify_export
from ..version import __version__
from .export import architecture_of, save_pretrained

__all__ = ["PushResult", "check_export", "push_to_hub", "require_token", "upload_export"]


@dataclass(frozen=True)
class PushResult:
    """Where a push went. ``os.fspath(result)`` (or ``Path(result)``) is the kept local export."""

    local_dir: Path
    repo_id: str
    revision: str
    commit_oid: str | None
    commit_url: str | None

    def __fspath__(self) -> str:
        return str(self.local_dir)


def require_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ValueError(
            "pushing to the Hugging Face Hub needs a write token: pass token=..., set HF_TOKEN, "
            "or run `hf auth login` once"
        )
    return token


def check_export(directory: str | os.PathLike[str]) -> Path:
    """Check an export directory before anything is sent; returns its resolved path.

    Refused: no ``config.json`` / ``model.safetensors``; a symlink or any entry that is not a
    regular file or directory (an upload would send what it points to, from outside the export);
    a pickle file; a ``config.json`` that is not JSON; weights whose recorded sha256 differ.

    Raises:
        ValueError: naming the directory and the offending entries.
        ChecksumMismatchError, ExportMismatchError (both :class:`~dcls_zoo.errors.DclsZooError`): a
            weights file or ``config.json`` changed since export.
    """
    directory = Path(directory)
    if directory.is_symlink():
        raise ValueError(f"{directory} is a symlink; push the export directory itself")
    directory = directory.resolve()
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    links, odd, pickles = [], [], []
    for path in sorted(directory.rglob("*")):
        relative = str(path.relative_to(directory))
        if path.is_symlink():
            links.append(f"{relative} -> {os.readlink(path)}")
        elif not (path.is_file() or path.is_dir()):
            odd.append(relative)
        elif path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
            pickles.append(relative)
    if links or odd:
        raise ValueError(
            f"{directory} holds {'symlinks ' + ', '.join(links) if links else ''}"
            f"{' and ' if links and odd else ''}{'special files ' + ', '.join(odd) if odd else ''}: an export must hold "
            "regular files only (a link would upload a file from outside it, a special file is no file to upload). "
            "Replace them with copies or remove them"
        )
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / name).is_file()]
    if missing:
        raise ValueError(f"{directory} is not an export directory: no {', '.join(missing)} (write it with save_pretrained)")
    if pickles:
        raise ValueError(f"{directory} holds pickle files {pickles}; remove them, an export carries safetensors only")
    # never upload a tampered export: checksums, and config.json against its weights' record
    verify_export(directory, read_export_config(directory, f"export {directory}"), f"export {directory}")
    return directory


def _retry_command(directory: Path, repo_id: str, revision: str | None, private: bool) -> str:
    command = f"dcls-zoo push {shlex.quote(str(directory))} --repo-id {shlex.quote(repo_id)}"
    if revision:
        command += f" --revision {shlex.quote(revision)}"
    if private:
        command += " --private"
    return command


def upload_export(
    directory: str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Upload an export directory (from :func:`save_pretrained`) to the Hub repo ``repo_id``.

    Creates the repo (``exist_ok``) and, for a ``revision`` other than ``main``, the branch, then
    uploads the folder in one ``upload_folder`` call. ``endpoint`` defaults to ``HF_ENDPOINT``.

    Raises:
        ValueError: no token (checked first), not an export directory, pickle files in it.
        DclsZooError: a tampered export (see :func:`check_export`).
        PushError: the Hub could not be reached or refused; the directory is untouched and the
            message gives the command that retries the upload.
    """
    from huggingface_hub import HfApi

    token = require_token(token)
    directory = check_export(directory)
    api = HfApi(endpoint=endpoint, token=token, library_name="dcls-zoo", library_version=__version__)
    target = repo_id
    try:
        target = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, "main"):
            api.create_branch(target, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=target,
            folder_path=directory,
            revision=revision,
            commit_message=commit_message or "Upload a dcls-zoo export",
        )
    except Exception as error:
        raise PushError(
            f"pushing {directory} to {target} on {api.endpoint} failed ({type(error).__name__}: {error}).\n"
            f"The local export is intact at {directory}; retry the upload with:\n"
            f"    {_retry_command(directory, target, revision, private)}",
            directory,
        ) from error
    return PushResult(directory, target, revision or "main", getattr(info, "oid", None), getattr(info, "commit_url", None))


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    model_card: Mapping[str, Any] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Export ``model`` with :func:`save_pretrained` into ``local_dir`` and upload it to ``repo_id``.

    The token (``token=``, else ``HF_TOKEN`` or a saved login, via ``huggingface_hub.get_token()``)
    is checked before anything is written. The export is kept: ``local_dir``, or a new
    ``dcls-zoo-export-*`` folder in the temp directory; it is the result's ``local_dir``.

    Returns:
        :class:`PushResult` (``os.fspath(result)`` is the export directory).

    Raises:
        ValueError: no token, or as :func:`save_pretrained`.
        PushError: the upload failed; the export is intact and the message says how to retry.
    """
    from huggingface_hub.utils import validate_repo_id

    token = require_token(token)
    validate_repo_id(repo_id)
    directory = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp(prefix="dcls-zoo-export-"))
    save_pretrained(model, directory, model_card=model_card, label_names=label_names, data_config=data_config,
                    repo_id=repo_id)
    message = commit_message or f"Upload {architecture_of(model)} (dcls-zoo)"
    return upload_export(directory, repo_id, revision=revision, private=private, token=token,
                         commit_message=message, endpoint=endpoint)


