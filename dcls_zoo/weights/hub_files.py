"""Files of Hugging Face Hub repos: one downloader (:func:`hub_file`) under the network deadline,
with the Hub's answers turned into our errors and the cached file checked to stay in the cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import NotOnHubError, PretrainedWeightsError, UnsafeFileNameError
from ..version import __version__
from .network import hf_cache_dir, hub_unreachable_error, is_unreachable, network_deadline

__all__ = ["HubFile", "hub_file"]


@dataclass(frozen=True)
class HubFile:
    """A file of a Hub repo in the Hugging Face cache, and the commit it was resolved at."""

    path: Path
    repo_id: str
    filename: str
    commit: str | None


def _status_404(error: BaseException | None) -> bool:
    for _ in range(8):  # the exception chain, cause first
        if error is None:
            return False
        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) == 404:
            return True
        error = error.__cause__ or error.__context__
    return False


def _check_repo_file_name(filename: str, repo_id: str) -> None:
    path = PurePosixPath(filename)
    if not filename or path.is_absolute() or "\\" in filename or "\x00" in filename or ".." in path.parts:
        raise UnsafeFileNameError(f"refusing the Hub file name {filename!r} of {repo_id}: it must be a relative path inside the repo")


def _commit_of(path: Path) -> str | None:
    # <cache>/models--org--name/snapshots/<commit>/<filename>
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def hub_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    what: str | None = None,
) -> HubFile:
    """Download (or find in the Hugging Face cache) one file of a Hub model repo.

    Runs under :func:`network_deadline`; ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the cache behave
    as in ``huggingface_hub``.

    Raises:
        UnsafeFileNameError: a file name that is not a relative path inside the repo, or a cached
            file that resolves outside the cache.
        NotOnHubError: the Hub answered that the repo or the file does not exist.
        PretrainedWeightsError: a gated repo, or a pinned revision that does not exist.
        HubUnreachableError: no Hub (offline, no connection, a silent server) and no cached copy.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = what or f"{repo_id}/{filename}"
    source = f"Hugging Face Hub {repo_id}@{revision or 'main'}/{filename}"
    _check_repo_file_name(filename, repo_id)
    try:
        with network_deadline():
            path = Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    library_name="dcls-zoo",
                    library_version=__version__,
                )
            )
    except GatedRepoError as error:
        raise PretrainedWeightsError(f"{source}: the repo is gated and this account has no access ({error})") from error
    except RevisionNotFoundError as error:
        # A pinned revision that does not exist is an error, never a silent fallback.
        raise PretrainedWeightsError(f"{source}: revision {revision!r} does not exist in {repo_id}") from error
    except LocalEntryNotFoundError as error:  # before EntryNotFoundError: it is one
        if _status_404(error):  # a plain 404 from a server without Hub error codes
            raise NotOnHubError(f"{source}: not found (404)") from error
        raise hub_unreachable_error(what, error.__cause__ or error, cache_dir=cache_dir) from error
    except (RepositoryNotFoundError, EntryNotFoundError) as error:
        raise NotOnHubError(f"{source}: {str(error).splitlines()[0]}") from error
    except Exception as error:
        if is_unreachable(error):
            raise hub_unreachable_error(what, error, cache_dir=cache_dir) from error
        raise
    cache = hf_cache_dir(cache_dir).resolve()
    if not path.resolve().is_relative_to(cache):
        raise UnsafeFileNameError(f"{source}: the cached file {path} resolves outside the Hugging Face cache {cache}")
    return HubFile(path, repo_id, filename, _commit_of(path))
