"""A loopback stand-in for the Hugging Face Hub HTTP API, for offline tests of real client code.

Only the routes ``huggingface_hub`` (2.x), timm's ``hf-hub:`` loader and our push code use are
served; the unmodified client talks to it through ``HF_ENDPOINT`` (or ``endpoint=``). Every
preupload is answered ``uploadMode: "regular"``, so files travel base64-encoded inside the commit
and no LFS or Xet transfer is ever needed (fine for the KB-to-MB test models).

State lives in memory: ``repos[repo_id]`` holds its commits (sha -> {path: bytes}) and branches
(name -> sha). Every request is appended to :attr:`FakeHub.requests` as ``(method, path)`` so a
test can assert that nothing (or something) reached the server.

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

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

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
    """The server's state and lifecycle. ``with FakeHub() as hub:`` serves on ``hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        # When set, every request is dropped without an answer (a server that died mid-way).
        self.dead = False
        # A route name (e.g. "create") after whose answer the server dies.
        self.die_after: str | None = None
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake hub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (new connections are refused)."""
        self.dead = True
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

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])

    def _new_commit(self, repo: Repo, files: dict[str, bytes]) -> str:
        sha = hashlib.sha1(f"commit {next(self._counter)} {id(repo)}".encode()).hexdigest()
        repo.commits[sha] = files
        return sha

    # -- routes: each returns (status, json-able body | bytes, extra headers) -------------------

    def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes, token: str | None):
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
        hub = self.state
        if hub.dead:
            self.close_connection = True
            return
        split = urlsplit(self.path)
        body = self._body() if self.command == "POST" else b""
        auth = self.headers.get("Authorization")
        token = auth.split(" ", 1)[1] if auth and auth.lower().startswith("bearer ") else None
        with hub._lock:
            hub.requests.append((self.command, split.path))
            hub.authorizations.append(token)
        headers: dict[str, str] = {}
        try:
            status, payload, headers = hub.route(self.command, split.path, parse_qs(split.query), body, token)
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
            self.wfile.write(data)
        if hub.die_after is not None and split.path.rstrip("/").endswith(hub.die_after):
            hub.dead = True
            self.close_connection = True

    do_GET = do_HEAD = do_POST = _handle
