"""The network under every fetch: how long a server may stay silent, where fetched files are
cached, offline mode, and the one message for "no server and no cached copy".

- **Timeouts.** :func:`network_deadline` bounds how long the Hub and URL servers may stay silent:
  ``DCLS_ZOO_HUB_TIMEOUT`` seconds (default 45) with no answer at all, across
  ``huggingface_hub``'s retries, then the fetch fails with the usual advice. A slow but live
  download is never cut: the limit applies between answers, not to the whole transfer.
- **Caches.** Hub files go to the Hugging Face cache (:func:`hf_cache_dir`), URL files to
  ``<torch.hub.get_dir()>/checkpoints`` or the caller's ``cache_dir`` (:func:`download_dir`).
- **Errors.** :func:`hub_unreachable_error` is the one message for "no Hub and no cached copy"
  (offline mode, no connection, a silent server): reuse a cache with ``HF_HUB_OFFLINE=1``, point
  ``HF_ENDPOINT`` at a mirror, or load an export with ``local-dir:``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import HubUnreachableError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "download_dir",
    "hf_cache_dir",
    "hub_download_errors",
    "hub_timeout",
    "hub_unreachable_error",
    "is_unreachable",
    "network_deadline",
    "offline",
    "socket_timeout",
]

_logger = logging.getLogger(__name__)

#: Environment variable: seconds a server may stay silent before a fetch gives up.
TIMEOUT_ENV = "DCLS_ZOO_HUB_TIMEOUT"
DEFAULT_TIMEOUT_S = 45.0


# --------------------------------------------------------------------------------------------
# caches and offline mode


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


class _QuietRetries(logging.Filter):
    """Inside a :func:`network_deadline`, huggingface_hub's retry warnings ("... thrown while
    requesting ...", "Retrying in 1s [Retry 1/5]") are not shown: the fetch ends either with the
    file or with :func:`hub_unreachable_error`, one message that says what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SILENCE.get() is None:
            return True
        message = record.getMessage()
        return not ("thrown while requesting" in message or message.startswith(("Retrying in", "Rate limited")))


def _install_hub_hooks() -> None:
    """Wrap huggingface_hub's client factory so that its requests honour :func:`network_deadline`
    (outside a deadline the hooks do nothing). Installed once, on the first fetch."""
    global _HOOKS_INSTALLED
    with _HOOKS_LOCK:
        if _HOOKS_INSTALLED:
            return
        from huggingface_hub.utils import _http

        logging.getLogger(_http.__name__).addFilter(_QuietRetries())
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


def socket_timeout() -> float:
    """Seconds a socket may wait now: what is left of the open silence (or the whole limit)."""
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


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (from huggingface_hub or timm's use of it) means "no server, no cached copy"."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    client = _http_client_module()
    transport = (client.TransportError,) if client is not None else ()
    return isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError, *transport))


@contextlib.contextmanager
def hub_download_errors(what: str = "the model") -> Iterator[None]:
    """Run Hub downloads under :func:`network_deadline`, turning "no Hub and no cached copy" into a
    :class:`HubUnreachableError` whose message says how to go on::

        with dcls_zoo.weights.network.hub_download_errors("org/repo"):
            model = timm.create_model("hf-hub:org/repo", pretrained=True)
    """
    try:
        with network_deadline():
            yield
    except HubUnreachableError:
        raise
    except Exception as error:
        if not is_unreachable(error):
            raise
        raise hub_unreachable_error(what, error.__cause__ or error) from error


