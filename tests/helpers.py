"""What the tests share: the repository root, the short-run command options, the multiply-add
count, the optional oracle, and one loopback server (a fake Hugging Face Hub that also serves
plain URL files). ``conftest.py`` puts this folder on ``sys.path``: ``from helpers import ...``.

The fixtures built on these (``fake_hub``, ``loopback_server``, ``official_dcls``) live in
``conftest.py``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib
import itertools
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, unquote, urlsplit

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


# ------------------------------------------------------------------------------------------
# short runs of `dcls-zoo fit` (options appended after `-c <config>`)

NO_PROGRESS_BAR = "--trainer.enable_progress_bar=false"
# the after-fit job (test the best checkpoint, export it) left out
NO_AFTER_FIT = ["--test_after_fit=false", "--export_after_fit=false"]
# one batch of each loop (Lightning's fast_dev_run: no checkpoints, no logs), nothing after
QUICK_FIT = ["--trainer.fast_dev_run=true", *NO_AFTER_FIT]


def short_fit(
    epochs: int = 1,
    train_batches: int = 3,
    val_batches: int | None = 2,
    test_batches: int | None = None,
    batch_size: int | None = 32,
    **model: object,
) -> list[str]:
    """A real run (checkpoints, logs, EMA, the after-fit job unless :data:`NO_AFTER_FIT` follows)
    made short: ``epochs`` epochs of ``train_batches`` batches, no progress bar. ``None`` keeps the
    config's value; ``model`` items become ``--model.<name>=<value>``."""
    options = [f"--trainer.max_epochs={epochs}", f"--trainer.limit_train_batches={train_batches}"]
    if val_batches is not None:
        options.append(f"--trainer.limit_val_batches={val_batches}")
    if test_batches is not None:
        options.append(f"--trainer.limit_test_batches={test_batches}")
    options.append(NO_PROGRESS_BAR)
    options += [f"--model.{name}={value}" for name, value in model.items()]
    if batch_size is not None:
        options.append(f"--data.batch_size={batch_size}")
    return options


# the quickstart for one epoch of 3 batches of 32, 2 validation batches
TINY_FIT = short_fit()


# ------------------------------------------------------------------------------------------
# multiply-adds

# the ops of convolutions and linear layers (addmm: with a bias, mm: without)
MULTIPLY_ADD_OPS = ("aten.convolution", "aten.addmm", "aten.mm")


def class_folders(root: Path, classes: tuple[int, ...] = (0, 1), counts: dict[str, int] | None = None) -> Path:
    """ImageNet-style RGB class folders (``root/{train,val,test}/<class name>/N.jpg``) made from the
    embedded Fashion-MNIST images: the data a user fine-tunes on. ``counts``: images per class and split."""
    from PIL import Image

    from lightning_modules.data.fashion_mnist import CLASS_NAMES, load_embedded

    counts = counts or {"train": 16, "val": 4, "test": 4}
    for split, count in counts.items():
        images, labels = load_embedded("test" if split == "test" else "train")
        offset = {"train": 0, "val": counts["train"], "test": 0}[split]  # train and val: disjoint images
        for label in classes:
            folder = root / split / CLASS_NAMES[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for index, image in enumerate(images[labels == label][offset:offset + count]):
                Image.fromarray(image).convert("RGB").save(folder / f"{index}.jpg", quality=95)
    return root


def counted_multiply_adds(counter: torch.utils.flop_counter.FlopCounterMode) -> float:
    """The multiply-adds of the convolutions and linear layers a ``FlopCounterMode`` saw: half its
    FLOPs of :data:`MULTIPLY_ADD_OPS` (it counts a multiply-add as two FLOPs)."""
    counts = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    return sum(counts.get(op, 0) for op in MULTIPLY_ADD_OPS) / 2


def multiply_adds(model: torch.nn.Module, size: int = 224) -> float:
    """Multiply-adds of one ``1 x 3 x size x size`` forward, as the papers count them (fvcore's,
    timm's GMACs): convolutions and linear layers only, of the fused network, every DCLS layer as
    its dense ``size x size``-window convolution. Kernel construction (about 0.2% of a ResNet-50-dcls
    forward), and the taps an unfused layer skips because they are zero or never meet the image,
    are not subtracted. Counted on a meta-device copy: exact shapes, nothing computed, ``model``
    untouched."""
    from dcls_zoo.fuse import fuse

    meta = fuse(copy.deepcopy(model).to("meta"), inplace=True)
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, 3, size, size, device="meta"))
    return counted_multiply_adds(counter)


# ------------------------------------------------------------------------------------------
# the optional oracle: the authors' package, dcls 0.1.1 (`import DCLS`)

ORACLE_MODULE = "DCLS.construct.modules"
# set (to anything but "" or "0") to run the suite as if the oracle were not installed
HIDE_ORACLE_ENV = "DCLS_ZOO_TESTS_HIDE_ORACLE"
ORACLE_MISSING = "needs the official dcls 0.1.1 package, the oracle (pip install dcls==0.1.1)"


def official_dcls_modules() -> ModuleType | None:
    """The official ``DCLS.construct.modules``, or None where it is not installed (or hidden)."""
    if os.environ.get(HIDE_ORACLE_ENV, "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(ORACLE_MODULE)
    except ImportError:
        return None


# ------------------------------------------------------------------------------------------
# the Hugging Face client pointed at a server


def point_hub_client_at(monkeypatch, url: str, home: Path) -> dict[str, str]:
    """Point huggingface_hub at ``url`` with its home (cache, token file) under ``home``.

    huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` & co. into ``huggingface_hub.constants`` at
    import, so the module attributes are patched (every path derived from the old home too) and
    the variables are set for subprocesses, which get the returned environment. ``HF_TOKEN`` is
    a fake token; the cache is ``home / "hub"``.
    """
    from huggingface_hub import constants

    old_home = constants.HF_HOME
    for name in dir(constants):
        value = getattr(constants, name)
        if name.isupper() and isinstance(value, str) and value.startswith(old_home):
            monkeypatch.setattr(constants, name, str(home) + value[len(old_home) :])
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    variables = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN": "hf_fake_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    return dict(os.environ)


# ------------------------------------------------------------------------------------------
# one loopback server: a fake Hub, plain URL files, and the ways a server misbehaves

USER = "tester"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub, for regular files) gives a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """A branch name or a full commit sha -> the commit sha, else None."""
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class _Reply(Exception):
    """Raised by a route to answer with an error status."""

    def __init__(self, status: int, message: str, error_code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.error_code, self.commit = status, error_code, commit


class FakeHub:
    """A loopback HTTP server: ``with FakeHub() as server:`` serves on ``server.url`` (127.0.0.1).

    **The Hub.** The routes ``huggingface_hub`` (2.x), timm's ``hf-hub:`` loader and our push code
    use; the unmodified client talks to it through ``HF_ENDPOINT`` (:func:`point_hub_client_at`).
    Every preupload is answered ``uploadMode: "regular"``, so files travel base64-encoded inside
    the commit and no LFS or Xet transfer is ever needed (fine for KB-to-MB test models).
    ``repos[repo_id]`` holds its commits (sha -> {path: bytes}) and branches (name -> sha); a test
    adds one with :meth:`put` and reads one with :meth:`files`.

    **Plain URL files.** ``url_files[path] = bytes`` is served at ``url + path`` (GET and HEAD;
    ``path`` raw, as sent: ``"/files/a%2Fb.pth"``), before any Hub route. Other paths answer 404.

    **Misbehaviour**, for any path: ``truncate`` names paths answered with their full
    Content-Length but half the bytes, then the connection is closed; ``chunk_delay`` (s) sends
    bodies in 1 KiB chunks, sleeping before each (slow but live); ``silent`` takes every request
    and never answers; ``dead`` drops every request unanswered (the connection closed);
    ``die_after`` names a path after whose answer the server goes dead.

    **The log.** Every request is appended to ``requests`` as ``(method, raw path)`` (no query) and
    its bearer token to ``authorizations``; :meth:`hits` filters the log.

    Routes (``{repo}`` is ``namespace/name``, revisions arrive URL-quoted)::

        GET  /api/whoami-v2
        POST /api/repos/create                       {name, organization, visibility?} -> {url}; 409 keeps {url}
        POST /api/validate-yaml                      {content} -> {errors, warnings}  (YAML parsed for real)
        GET  /api/models/{repo}[/revision/{rev}]     model info: id, sha, private, siblings
        GET  /api/models/{repo}/tree/{rev}[/{path}]  ?recursive= ; file and directory entries
        POST /api/models/{repo}/paths-info/{rev}     {paths} -> entries
        POST /api/models/{repo}/preupload/{rev}      -> every file "regular", oid of the current blob
        POST /api/models/{repo}/commit/{rev}         NDJSON header/file/deletedFile/deletedFolder
        POST /api/models/{repo}/branch/{branch}      {startingPoint?}; 409 when it exists
        HEAD/GET /{repo}/resolve/{rev}/{path}        ETag (git blob sha1), X-Repo-Commit, Content-Length
    """

    chunk_size = 1024

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.url_files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self.env: dict[str, str] = {}  # the fake_hub fixture's environment for subprocesses
        self.truncate: set[str] = set()
        self.chunk_delay = 0.0
        self.silent = False
        self.dead = False
        self.die_after: str | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # releases the handlers a silent server holds
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the loopback server is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        server = self

        class Handler(_Handler):
            state = server

        self._stopped.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs=dict(poll_interval=0.02), name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (new connections are refused)."""
        self.dead = True
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests --------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the log and every misbehaviour (repos and URL files stay)."""
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
        self.truncate.clear()
        self.chunk_delay, self.silent, self.dead, self.die_after = 0.0, False, False, None

    def hits(self, fragment: str) -> list[tuple[str, str]]:
        """The logged requests whose path contains ``fragment``."""
        return [request for request in self.requests if fragment in request[1]]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])

    def put(self, repo_id: str, files: dict[str, bytes], branch: str | None = "main", commit: str | None = None) -> str:
        """Add a commit holding exactly ``files`` to ``repo_id`` (created, empty, when new); ``branch``
        (None: no branch, the commit is reachable by its sha) then points at it. ``commit`` chooses
        its sha. Returns the sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            sha = self._new_commit(repo, dict(files), commit)
            if branch is not None:
                repo.branches[branch] = sha
        return sha

    def _new_commit(self, repo: Repo, files: dict[str, bytes], sha: str | None = None) -> str:
        sha = sha or hashlib.sha1(f"commit {next(self._counter)} {id(repo)}".encode()).hexdigest()
        repo.commits[sha] = files
        return sha

    # -- routes: each returns (status, json-able body | bytes, extra headers) -------------------

    def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes, token: str | None):
        if path in self.url_files and method in ("GET", "HEAD"):
            return 200, self.url_files[path], {"Content-Type": "application/octet-stream"}
        writes = method == "POST" and not path.startswith("/api/validate-yaml")
        if writes and not token:
            raise _Reply(401, "Invalid credentials in Authorization header")
        if path == "/api/whoami-v2" and method == "GET":
            if not token:
                raise _Reply(401, "Invalid credentials in Authorization header")
            return 200, {"type": "user", "name": USER, "orgs": [], "auth": {"accessToken": {"role": "write"}}}, {}
        if path == "/api/repos/create" and method == "POST":
            return self._create(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        match = re.fullmatch(rf"/api/models/{_REPO}(?:/revision/(?P<rev>.+))?", path)
        if match and method == "GET":
            return self._info(match["repo"], unquote(match["rev"] or "main"))
        match = re.fullmatch(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", path)
        if match and method == "GET":
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self._tree(match["repo"], unquote(match["rev"]), unquote(match["path"] or ""), recursive)
        match = re.fullmatch(rf"/api/models/{_REPO}/(?P<op>preupload|commit|paths-info|branch)/(?P<rev>.+)", path)
        if match and method == "POST":
            repo_id, revision = match["repo"], unquote(match["rev"])
            if match["op"] == "preupload":
                return self._preupload(repo_id, revision, json.loads(body))
            if match["op"] == "commit":
                return self._commit(repo_id, revision, body)
            if match["op"] == "branch":
                return self._branch(repo_id, revision, json.loads(body or b"{}"))
            return self._paths_info(repo_id, revision, body)
        match = re.fullmatch(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", path)
        if match and method in ("GET", "HEAD"):
            return self._resolve(match["repo"], unquote(match["rev"]), unquote(match["path"]))
        raise _Reply(404, f"no route {method} {path}")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _Reply(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise _Reply(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    def _create(self, payload: dict):
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = {"url": f"{self.url}/{repo_id}"}
        if repo_id in self.repos:
            return 409, dict(url, error="You already created this model repo"), {}
        repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        repo.branches["main"] = self._new_commit(repo, {".gitattributes": _GITATTRIBUTES})
        self.repos[repo_id] = repo
        return 200, url, {}

    @staticmethod
    def _validate_yaml(payload: dict):
        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            front = content.split("---", 2)[1] if content.count("---") >= 2 else None
            try:
                if front is None or not isinstance(yaml.safe_load(front), (dict, type(None))):
                    errors.append({"message": "metadata must be a YAML mapping between --- lines"})
            except yaml.YAMLError as error:
                errors.append({"message": f"invalid YAML: {error}"})
        if errors:
            return 400, {"errors": errors, "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _info(self, repo_id: str, revision: str):
        repo = self._repo(repo_id)
        sha = self._commit_of(repo, revision)
        siblings = [{"rfilename": p, "size": len(d)} for p, d in sorted(repo.commits[sha].items())]
        return 200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private, "siblings": siblings,
                     "tags": [], "downloads": 0, "likes": 0}, {}

    @staticmethod
    def _entry(path: str, data: bytes) -> dict:
        return {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path}

    def _tree(self, repo_id: str, revision: str, root: str, recursive: bool):
        repo = self._repo(repo_id)
        files = repo.commits[self._commit_of(repo, revision)]
        prefix = root.strip("/") + "/" if root.strip("/") else ""
        entries, directories = [], set()
        for path, data in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                directories.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._entry(path, data))
        if prefix and not entries and not directories:
            raise _Reply(404, f"{root} does not exist", "EntryNotFound")
        for directory in sorted(directories):
            if recursive or "/" not in directory[len(prefix) :]:
                entries.append({"type": "directory", "oid": git_blob_sha1(directory.encode()), "size": 0,
                                "path": directory})
        return 200, entries, {}

    def _paths_info(self, repo_id: str, revision: str, body: bytes):
        repo = self._repo(repo_id)
        files = repo.commits[self._commit_of(repo, revision)]
        try:
            paths = json.loads(body).get("paths", [])
        except ValueError:  # form-encoded
            paths = parse_qs(body.decode()).get("paths", [])
        return 200, [self._entry(p, files[p]) for p in paths if p in files], {}

    def _preupload(self, repo_id: str, revision: str, payload: dict):
        repo = self._repo(repo_id)
        files = repo.commits[self._commit_of(repo, revision)]
        answer = []
        for item in payload.get("files", []):
            current = files.get(item["path"])
            answer.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                           "oid": git_blob_sha1(current) if current is not None else None})
        return 200, {"files": answer, "commitOid": self._commit_of(repo, revision)}, {}

    def _commit(self, repo_id: str, revision: str, body: bytes):
        with self._lock:
            repo = self._repo(repo_id)
            if revision not in repo.branches:
                raise _Reply(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            files = dict(repo.commits[repo.branches[revision]])
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "file":
                    content = value["content"]
                    files[value["path"]] = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(folder)}
                elif key != "header":
                    raise _Reply(400, f"the fake hub accepts regular files only, got {key!r}")
            sha = self._new_commit(repo, files)
            repo.branches[revision] = sha
        return 200, {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo_id}/commit/{sha}",
                     "pullRequestUrl": None}, {}

    def _branch(self, repo_id: str, branch: str, payload: dict):
        repo = self._repo(repo_id)
        if branch in repo.branches:
            raise _Reply(409, f"Reference already exists: {branch}")
        repo.branches[branch] = self._commit_of(repo, payload.get("startingPoint") or "main")
        return 200, {}, {}

    def _resolve(self, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_id)
        sha = self._commit_of(repo, revision)
        data = repo.commits[sha].get(path)
        if data is None:
            raise _Reply(404, f"Entry not found: {path}", "EntryNotFound", commit=sha)
        headers = {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        return 200, data, headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeHub  # set on the subclass FakeHub.start builds

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        server = self.state
        if server.dead:
            self.close_connection = True
            return
        split = urlsplit(self.path)
        body = self._body() if self.command == "POST" else b""
        auth = self.headers.get("Authorization")
        token = auth.split(" ", 1)[1] if auth and auth.lower().startswith("bearer ") else None
        with server._lock:
            server.requests.append((self.command, split.path))
            server.authorizations.append(token)
        if server.silent:  # hold the connection, never answer
            server._stopped.wait()
            self.close_connection = True
            return
        headers: dict[str, str] = {}
        try:
            status, payload, headers = server.route(self.command, split.path, parse_qs(split.query), body, token)
        except _Reply as reply:
            status, payload = reply.status, {"error": str(reply)}
            if reply.error_code:
                headers["X-Error-Code"] = reply.error_code
                headers["X-Error-Message"] = str(reply)
            if reply.commit:
                headers["X-Repo-Commit"] = reply.commit
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self._write(data, truncated=split.path in server.truncate)
        if server.die_after is not None and split.path.rstrip("/").endswith(server.die_after):
            server.dead = True
            self.close_connection = True

    def _write(self, data: bytes, truncated: bool) -> None:
        if truncated:  # the announced length, half the bytes, the connection closed
            data = data[: len(data) // 2]
            self.close_connection = True
        delay, size = self.state.chunk_delay, self.state.chunk_size
        if not delay:
            self.wfile.write(data)
            return
        for start in range(0, len(data), size):
            time.sleep(delay)
            self.wfile.write(data[start : start + size])
            self.wfile.flush()

    do_GET = do_HEAD = do_POST = _handle
