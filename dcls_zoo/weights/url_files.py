"""Files at plain URLs (the authors' Zenodo releases and their mirrors): one downloader,
:func:`url_file`, into the download cache, named by the URL's file name (confined to the cache),
written atomically, under the network deadline, with a progress bar on a terminal."""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import PretrainedWeightsError, UnsafeFileNameError
from ..state_dicts import atomic_path, confined_path, plain_file_name
from ..version import __version__
from .network import TIMEOUT_ENV, download_dir, hub_timeout, network_deadline, offline, socket_timeout

__all__ = ["url_file", "url_file_name"]

_CHUNK = 1 << 20


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
    return plain_file_name(urllib.parse.unquote(raw), f"the URL {url!r}")


def url_file(
    url: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    allow_download: bool = True,
) -> Path | None:
    """The cached copy of ``url`` in :func:`download_dir` (downloaded first unless cached).

    The file is named by :func:`url_file_name` and confined by
    :func:`~dcls_zoo.state_dicts.confined_path`; the download is written through
    :func:`~dcls_zoo.state_dicts.atomic_path`, so a failure leaves nothing under the real name. Runs under :func:`network_deadline`.

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
    with atomic_path(path) as partial, network_deadline():  # nothing under the real name unless whole
        _download(url, partial, progress, desc=path.name)
    return path


def _download(url: str, destination: Path, progress: bool, desc: str) -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": f"dcls-zoo/{__version__}"})
    received = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=socket_timeout()) as response:
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
