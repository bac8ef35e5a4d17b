"""Fetching weight files: one downloader for Hub and URL files, one confinement rule, one timeout
policy, one translator of "the Hub is not there" into advice.

- **Confinement.** Every file written under a name this project did not choose (a URL's file
  name, a Hub file name) lands inside its cache directory: :func:`confined_path` refuses a name
  that, once decoded, holds a separator, ``..`` or a NUL, and checks the resolved path. Hub files
  go to the Hugging Face cache only (``huggingface_hub``'s own layout, checked after the call);
  URL files to ``<torch.hub.get_dir()>/checkpoints`` (or the caller's ``cache_dir``).
- **Timeouts.** :func:`network_deadline` bounds how long the Hub and URL servers may stay silent:
  ``DCLS_ZOO_HUB_TIMEOUT`` seconds (default 45) with no answer at all, across
  ``huggingface_hub``'s retries, then the fetch fails with the usual advice. A slow but live
  download is never cut: the limit applies between answers, not to the whole transfer.
- **Errors.** :func:`hub_unreachable_error` is the one message for "no Hub and no cached copy"
  (offline mode, no connection, a silent server): reuse a cache with ``HF_HUB_OFFLINE=1``, point
  ``HF_ENDPOINT`` at a mirror, or load an export with ``local-dir:``.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..state_dicts import sha256_file
from ..version import __version__

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "ChecksumMismatchError",
    "HubFile",
    "HubUnreachableError",
    "NotOnHubError",
    "PretrainedWeightsError",
    "UnsafeFileNameError",
    "WeightsReadError",
    "confined_path",
    "download_dir",
    "hf_cache_dir",
    "hub_download_errors",
    "hub_file",
    "hub_timeout",
    "hub_unreachable_error",
    "network_deadline",
    "offline",
    "url_file",
    "url_file_name",
    "verify_sha256",
]

_logger = logging.getLogger(__name__)

#: Environment variable: seconds a server may stay silent before a fetch gives up.
TIMEOUT_ENV = "DCLS_ZOO_HUB_TIMEOUT"
DEFAULT_TIMEOUT_S = 45.0
_CHUNK = 1 << 20


class PretrainedWeightsError(RuntimeError):
    """Weights that cannot be found, fetched or read (the message says which and why)."""


class ChecksumMismatchError(PretrainedWeightsError):
    """A weights file whose sha256 is not the one recorded for it."""


class WeightsReadError(PretrainedWeightsError, ValueError):
    """A fetched weights file that cannot be read: truncated, corrupted, or a refused pickle."""


class UnsafeFileNameError(PretrainedWeightsError):
    """A file name (from a URL or a config) that would leave its directory."""


class NotOnHubError(PretrainedWeightsError):
    """The Hub answered: no such repo, or no such file in it (404)."""


class HubUnreachableError(ConnectionError, PretrainedWeightsError):
    """A fetch found neither the server nor a cached copy (the message lists the ways out)."""


# --------------------------------------------------------------------------------------------
# confinement


def _check_file_name(name: str, origin: str) -> str:
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.sep in name
        or (os.altsep and os.altsep in name)
    ):
        raise UnsafeFileNameError(
            f"refusing the file name {name!r} from {origin}: a downloaded file must have a plain name (no path "
            "separator, no '..'), so that it stays in its cache directory"
        )
    return name


def confined_path(directory: str | os.PathLike[str], name: str, origin: str = "a download") -> Path:
    """``directory / name``, after checking that ``name`` is a plain file name and that the resolved
    path is inside the resolved ``directory``.

    Raises:
        UnsafeFileNameError: a name with a separator, ``..`` or a NUL, or one that resolves outside
            (e.g. through a symlink planted in the directory).
    """
    directory = Path(directory)
    path = directory / _check_file_name(name, origin)
    resolved_directory = directory.resolve()
    if path.resolve().parent != resolved_directory:
        raise UnsafeFileNameError(f"refusing to write {path} (from {origin}): it resolves outside {resolved_directory}")
    return path


def url_file_name(url: str) -> str:
    """The decoded file name at the end of ``url``'s path, checked by :func:`confined_path`'s rule.

    ``http://host/files/x.pth`` -> ``x.pth``; ``http://host/files/%2Fetc%2Fx.pth`` is refused
    (its decoded name holds separators).

    Raises:
        UnsafeFileNameError: no file name, or one that is not plain once decoded.
    """
    raw = urllib.parse.urlparse(url).path.rpartition("/")[2]
    if not raw:
        raise UnsafeFileNameError(f"cannot name a cache file after the URL {url!r}: its path has no file name")
    return _check_file_name(urllib.parse.unquote(raw), f"the URL {url!r}")


def download_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where URL downloads go: ``cache_dir``, else ``<torch.hub.get_dir()>/checkpoints``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The Hugging Face cache Hub files go to: ``cache_dir``, else ``HF_HUB_CACHE``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (nothing is downloaded then)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def verify_sha256(
    path: Path, expected: str | None, source: str, advice: str = "Delete it to download it again."
) -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` has sha256 ``expected`` (``None``: no check).

    ``advice`` ends the message (a downloaded file can be fetched again; an export must be rewritten).
    """
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"sha256 mismatch for {source}: the file {path} has sha256 {actual}; its record (weights table or "
            f"export config) names {expected}. The file is truncated, corrupted or not the published one; it is "
            f"not loaded. {advice}"
        )


# --------------------------------------------------------------------------------------------
# timeouts


def hub_timeout() -> float:
    """Seconds a server may stay silent (``DCLS_ZOO_HUB_TIMEOUT``, default 45).

    Raises:
        ValueError: the variable is not a positive number (naming it).
    """
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds (default {DEFAULT_TIMEOUT_S:g})")
    return value


class _Silence:
    """The open silence of one fetch: since when no server has answered, and for how long it may last."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since = time.monotonic()

    def remaining(self) -> float:
        return self.limit - (time.monotonic() - self.since)

    def answered(self) -> None:
        self.since = time.monotonic()


_SILENCE: contextvars.ContextVar[_Silence | None] = contextvars.ContextVar("dcls_zoo_fetch_silence", default=None)
_HOOKS_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def _http_client_module() -> Any:
    """The HTTP library huggingface_hub's client comes from (``httpx2`` in 2.x, ``httpx`` in 1.x)."""
    from huggingface_hub.utils import _http

    return getattr(_http, "httpx2", None) or getattr(_http, "httpx", None)


def _silence_exceeded(limit: float) -> Exception:
    from huggingface_hub.errors import OfflineModeIsEnabled

    class SilenceExceeded(OfflineModeIsEnabled):
        """No answer for the whole limit. huggingface_hub never retries this error and falls back
        on its cache as it does offline (a timeout would be retried 5 more times, with sleeps)."""

    return SilenceExceeded(f"no answer from the server for {limit:g} s ({TIMEOUT_ENV})")


def _on_request(request: Any) -> None:
    silence = _SILENCE.get()
    if silence is None:
        return
    remaining = silence.remaining()
    if remaining <= 0:
        raise _silence_exceeded(silence.limit)
    timeouts = dict(request.extensions.get("timeout") or {})
    for phase in ("connect", "read", "write", "pool"):
        current = timeouts.get(phase)
        timeouts[phase] = remaining if current is None else min(current, remaining)
    request.extensions["timeout"] = timeouts


def _on_response(response: Any) -> None:
    silence = _SILENCE.get()
    if silence is not None:
        silence.answered()


def _install_hub_hooks() -> None:
    """Wrap huggingface_hub's client factory so that its requests honour :func:`network_deadline`
    (outside a deadline the hooks do nothing). Installed once, on the first fetch."""
    global _HOOKS_INSTALLED
    with _HOOKS_LOCK:
        if _HOOKS_INSTALLED:
            return
        from huggingface_hub.utils import _http

        previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None)
        if previous is None or not hasattr(_http, "set_client_factory"):  # a client without factories
            _logger.debug("huggingface_hub %s has no client factory: its own timeouts apply", _http.__name__)
            _HOOKS_INSTALLED = True
            return

        def client_factory() -> Any:
            client = previous()
            hooks = client.event_hooks
            client.event_hooks = {
                "request": [*hooks.get("request", []), _on_request],
                "response": [*hooks.get("response", []), _on_response],
            }
            return client

        _http.set_client_factory(client_factory)
        _HOOKS_INSTALLED = True


@contextlib.contextmanager
def network_deadline(limit: float | None = None) -> Iterator[float]:
    """Fail fetches inside the block once no server has answered for ``limit`` seconds.

    Applies to ``huggingface_hub`` requests (across its retries, so ``hf_hub_download`` and timm's
    ``hf-hub:`` loads) and to :func:`url_file`. Each answer restarts the clock, so slow but live
    transfers run to the end. Nested blocks keep the outer clock.

    Args:
        limit: seconds; default :func:`hub_timeout` (``DCLS_ZOO_HUB_TIMEOUT``).

    Yields:
        The limit in force.
    """
    current = _SILENCE.get()
    if current is not None:
        yield current.limit
        return
    limit = hub_timeout() if limit is None else float(limit)
    _install_hub_hooks()
    token = _SILENCE.set(_Silence(limit))
    try:
        yield limit
    finally:
        _SILENCE.reset(token)


def _socket_timeout() -> float:
    silence = _SILENCE.get()
    if silence is None:
        return hub_timeout()
    remaining = silence.remaining()
    if remaining <= 0:
        raise TimeoutError(f"no answer from the server for {silence.limit:g} s ({TIMEOUT_ENV})")
    return remaining


# --------------------------------------------------------------------------------------------
# the error for "no server and no cached copy"


def hub_unreachable_error(
    what: str,
    cause: BaseException | str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    fallback_urls: Sequence[str] = (),
) -> HubUnreachableError:
    """The error saying that ``what`` could be fetched from neither the Hub nor a cache, and how to go on.

    Args:
        what: the model or file (``"convnext_dcls_tiny.in1k"``, ``"hf-hub:org/repo"``).
        cause: the underlying error or a phrase.
        cache_dir: the caller's cache directory, if any (named in the message).
        fallback_urls: fallback files that were not cached either.
    """
    from huggingface_hub import constants

    cache = hf_cache_dir(cache_dir)
    reason = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(cause)
    if offline():
        situation = (
            f"HF_HUB_OFFLINE is set and {what} is not in the Hugging Face cache {cache}: unset HF_HUB_OFFLINE once "
            "to download it, or point HF_HUB_CACHE (or HF_HOME) at the cache that holds it"
        )
    else:
        situation = (
            f"could not reach the Hugging Face Hub at {constants.ENDPOINT} to fetch {what} ({reason}), and the "
            f"cache {cache} has no copy"
        )
    lines = [
        situation + ".",
        "  - to use a copy downloaded before (the same cache, or one copied here), set HF_HUB_OFFLINE=1 and "
        "HF_HUB_CACHE / HF_HOME to its folder;",
        "  - to use a mirror or a private hub, set HF_ENDPOINT=<its URL> before starting Python;",
        f"  - a slow network: raise {TIMEOUT_ENV} (seconds of silence allowed, now {hub_timeout():g});",
    ]
    if fallback_urls:
        lines.append(
            f"  - or put the authors' file ({', '.join(fallback_urls)}) in the download cache {download_dir(cache_dir)} "
            "(DCLS_ZOO_ZENODO_URL names a mirror of the authors' files);"
        )
    lines.append(
        "  - or export the model once (dcls_zoo.save_pretrained(model, DIR)) and load it with "
        "create_model('local-dir:DIR', pretrained=True)."
    )
    return HubUnreachableError("\n".join(lines))


def _unreachable(error: BaseException) -> bool:
    """Whether ``error`` (from huggingface_hub or timm's use of it) means "no server, no cached copy"."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    client = _http_client_module()
    transport = (client.TransportError,) if client is not None else ()
    return isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError, *transport))


@contextlib.contextmanager
def hub_download_errors(what: str = "the model") -> Iterator[None]:
    """Run Hub downloads under :func:`network_deadline`, turning "no Hub and no cached copy" into a
    :class:`HubUnreachableError` whose message says how to go on::

        with dcls_zoo.hub_download_errors("org/repo"):
            model = timm.create_model("hf-hub:org/repo", pretrained=True)
    """
    try:
        with network_deadline():
            yield
    except HubUnreachableError:
        raise
    except Exception as error:
        if not _unreachable(error):
            raise
        raise hub_unreachable_error(what, error.__cause__ or error) from error


# --------------------------------------------------------------------------------------------
# Hub files


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
        if _unreachable(error):
            raise hub_unreachable_error(what, error, cache_dir=cache_dir) from error
        raise
    cache = hf_cache_dir(cache_dir).resolve()
    if not path.resolve().is_relative_to(cache):
        raise UnsafeFileNameError(f"{source}: the cached file {path} resolves outside the Hugging Face cache {cache}")
    return HubFile(path, repo_id, filename, _commit_of(path))


# --------------------------------------------------------------------------------------------
# URL files


def url_file(
    url: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    allow_download: bool = True,
) -> Path | None:
    """The cached copy of ``url`` in :func:`download_dir` (downloaded first unless cached).

    The file is named by :func:`url_file_name` and confined by :func:`confined_path`; a download
    goes to a temporary file beside it, is flushed to disk and renamed, so a failure leaves
    nothing under the real name. Runs under :func:`network_deadline`.

    Returns:
        The path, or ``None`` when the file is not cached and ``allow_download`` is False.

    Raises:
        UnsafeFileNameError: a URL whose file name would leave the directory.
        PretrainedWeightsError: offline mode without a cached copy, HTTP errors, a failed, silent
            or truncated download.
    """
    directory = download_dir(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = confined_path(directory, url_file_name(url), f"the URL {url!r}")
    if path.is_file():
        return path
    if not allow_download:
        return None
    if offline():
        raise PretrainedWeightsError(
            f"offline mode (HF_HUB_OFFLINE=1): not downloading {url}, and it is not in the download cache ({path}). "
            "Download it there, or unset HF_HUB_OFFLINE."
        )
    partial = confined_path(directory, f".{path.name}.{uuid.uuid4().hex}.partial", f"the URL {url!r}")
    try:
        with network_deadline():
            _download(url, partial, progress, desc=path.name)
        with open(partial, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _download(url: str, destination: Path, progress: bool, desc: str) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": f"dcls-zoo/{__version__}"})
    received = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=_socket_timeout()) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            # disable=None: tqdm shows the bar on a terminal only.
            disable = True if not progress or are_progress_bars_disabled() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=disable) as bar:
                with open(destination, "wb") as file:
                    while chunk := response.read(_CHUNK):
                        file.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise PretrainedWeightsError(f"downloading {url} failed: HTTP {error.code} {error.reason}") from error
    except http.client.IncompleteRead as error:
        raise PretrainedWeightsError(
            f"downloading {url} failed: the connection closed after {received + len(error.partial)} of {total} bytes "
            "(truncated download; nothing was cached)"
        ) from error
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        if isinstance(reason, TimeoutError) or isinstance(error, TimeoutError):
            reason = f"no answer for {hub_timeout():g} s (raise {TIMEOUT_ENV} for a slow network)"
        raise PretrainedWeightsError(
            f"downloading {url} failed: {reason}. Check the connection, or set DCLS_ZOO_ZENODO_URL to a mirror of "
            "the authors' files"
        ) from error
    if total is not None and received != total:
        raise PretrainedWeightsError(
            f"downloading {url} failed: received {received} of {total} bytes (truncated download; nothing was cached)"
        )
