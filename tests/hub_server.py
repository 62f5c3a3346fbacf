"""A local HTTP server that answers like the Hugging Face Hub, for download tests without network.

``FakeHub(repos)`` serves ``{repo_id: {filename: bytes}}`` at the commit :data:`SHA` (branch
``main``) on 127.0.0.1 (a free port), in a thread; point ``huggingface_hub`` at :attr:`FakeHub.url`
(``HF_ENDPOINT``; the tests patch ``huggingface_hub.constants``). What huggingface_hub 2.4 asks
(``hf_api.py``, ``file_download.py``, ``_snapshot_download.py``, ``utils/_http.py``):

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``HfApi.model_info`` /
  ``repo_info``): JSON with ``id``, ``sha`` and ``siblings`` (``[{"rfilename": ...}]``);
* ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...&expand=...``
  (``HfApi.list_repo_tree``, which ``snapshot_download`` uses): a JSON list of
  ``{"type": "file", "path", "size", "oid"[, "lfs": {"oid", "size", "pointerSize"}]}`` and
  ``{"type": "directory", "path", "oid"}``;
* ``HEAD /{repo}/resolve/{rev}/{filename}`` (``get_hf_file_metadata``): ``X-Repo-Commit``,
  ``ETag`` (git blob sha1, or sha256 for LFS files, which also carry ``X-Linked-Etag`` and
  ``X-Linked-Size``), ``Content-Length``; no ``X-Xet-*`` header, so plain HTTP is used;
* ``GET`` of the same, with ``Range: bytes=N-`` when huggingface_hub resumes (answered 206).

Errors carry the ``X-Error-Code`` huggingface_hub maps to its exceptions: ``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo`` (401 without a token, 403 with a wrong
one; a gated repo's files need ``Authorization: Bearer <token>``, its listings are public as on
the Hub). :meth:`FakeHub.drop_after` cuts a file's body after N bytes for its first GETs.
Every request is logged in :attr:`FakeHub.log` (method, path, query, headers, status).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

#: the commit every repository's ``main`` points to
SHA = hashlib.sha1(b"co2s fake hub commit").hexdigest()
#: the token that opens gated repositories
TOKEN = "hf_co2s_test_token"
#: files stored with Git LFS on the Hub (ETag = sha256, X-Linked-* headers)
LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".msgpack", ".h5", ".pt", ".pth")


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict  # lower-case names
    status: int = 0


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]] | None = None, sha: str = SHA, token: str = TOKEN):
        self.repos: dict[str, Repo] = {}
        self.token = token
        self.log: list[Request] = []
        self._drops: dict[tuple[str, str], list[int]] = {}  # (repo, file) -> [bytes, times left]
        self._lock = threading.Lock()
        for repo_id, files in (repos or {}).items():
            self.add_commit(repo_id, files, sha, ref="main")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- set-up ------------------------------------------------------------------------------

    def add_commit(self, repo_id: str, files: dict[str, bytes], sha: str, ref: str | None = None) -> None:
        repo = self.repos.setdefault(repo_id, Repo())
        repo.commits[sha] = dict(files)
        if ref is not None:
            repo.refs[ref] = sha

    def gate(self, repo_id: str) -> None:
        self.repos[repo_id].gated = True

    def drop_after(self, repo_id: str, filename: str, nbytes: int, times: int = 1) -> None:
        """Close the connection after ``nbytes`` of the body of the next ``times`` GETs of the file."""
        self._drops[(repo_id, filename)] = [nbytes, times]

    # -- life --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what the tests look at --------------------------------------------------------------

    def requests(self, repo_id: str | None = None) -> list[Request]:
        """The logged requests (of one repository's API and files, when given)."""
        with self._lock:
            log = list(self.log)
        if repo_id is None:
            return log
        return [r for r in log if r.path.startswith((f"/api/models/{repo_id}/", f"/{repo_id}/"))
                or r.path == f"/api/models/{repo_id}"]

    def file_requests(self, repo_id: str) -> list[tuple[str, str, str]]:
        """(method, revision, filename) of the ``/resolve/`` requests of a repository."""
        prefix = f"/{repo_id}/resolve/"
        out = []
        for r in self.requests(repo_id):
            if r.path.startswith(prefix):
                revision, _, filename = r.path[len(prefix):].partition("/")
                out.append((r.method, unquote(revision), unquote(filename)))
        return out

    # -- answers -----------------------------------------------------------------------------

    def _take_drop(self, repo_id: str, filename: str) -> int | None:
        with self._lock:
            drop = self._drops.get((repo_id, filename))
            if drop is None or drop[1] <= 0:
                return None
            drop[1] -= 1
            return drop[0]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(filename: str) -> bool:
    return filename.endswith(LFS_SUFFIXES)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the hub keeps its own log
            pass

        def do_GET(self) -> None:
            self._answer("GET")

        def do_HEAD(self) -> None:
            self._answer("HEAD")

        # ----------------------------------------------------------------------------------

        def _answer(self, method: str) -> None:
            parts = urlsplit(self.path)
            self.request_record = Request(method, unquote(parts.path), parse_qs(parts.query),
                                          {k.lower(): v for k, v in self.headers.items()})
            hub._record(self.request_record)
            path = parts.path
            if path.startswith("/api/models/"):
                self._api(path[len("/api/models/"):])
            elif "/resolve/" in path:
                self._resolve(method, path)
            else:
                self._error(404, "NotFound", "no such endpoint")

        def _repo(self, owner_name: str) -> Repo | None:
            repo = hub.repos.get(owner_name)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        def _commit(self, repo: Repo, revision: str) -> str | None:
            revision = unquote(revision)
            sha = revision if revision in repo.commits else repo.refs.get(revision)
            if sha is None:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
            return sha

        def _api(self, rest: str) -> None:
            segments = rest.split("/")
            repo_id = "/".join(segments[:2])
            repo = self._repo(repo_id)
            if repo is None:
                return
            tail = segments[2:]
            if not tail or tail[0] == "revision":
                sha = self._commit(repo, tail[1] if len(tail) > 1 else "main")
                if sha is None:
                    return
                files = repo.commits[sha]
                body = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                        "gated": "manual" if repo.gated else False, "disabled": False, "tags": [],
                        "siblings": [{"rfilename": f} for f in sorted(files)]}
                self._json(body)
            elif tail[0] == "tree" and len(tail) >= 2:
                sha = self._commit(repo, tail[1])
                if sha is None:
                    return
                below = unquote("/".join(tail[2:]))
                recursive = self.request_record.query.get("recursive", ["false"])[0].lower() == "true"
                self._json(_tree(repo.commits[sha], below, recursive))
            else:
                self._error(404, "NotFound", "no such endpoint")

        def _resolve(self, method: str, path: str) -> None:
            head, _, tail = path.lstrip("/").partition("/resolve/")
            repo = self._repo(head)
            if repo is None:
                return
            revision, _, filename = tail.partition("/")
            sha = self._commit(repo, revision)
            if sha is None:
                return
            filename = unquote(filename)
            if repo.gated:
                auth = self.headers.get("Authorization")
                if auth != f"Bearer {hub.token}":
                    message = (f"Access to model {head} is restricted. You must have access to it and be "
                               "authenticated to access it. Please log in.")
                    self._error(401 if auth is None else 403, "GatedRepo", message, sha)
                    return
            data = repo.commits[sha].get(filename)
            if data is None:
                self._error(404, "EntryNotFound", f"{filename} does not exist on \"{revision}\"", sha)
                return
            headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if _is_lfs(filename):
                etag = hashlib.sha256(data).hexdigest()
                headers.update({"ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
            else:
                headers["ETag"] = f'"{git_blob_sha1(data)}"'
            start = 0
            ranged = self.headers.get("Range")
            status = 200
            if method == "GET" and ranged and ranged.startswith("bytes="):
                first, _, last = ranged[len("bytes="):].partition("-")
                start = int(first)
                end = int(last) if last else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data = data[start:end + 1]
                status = 206
            drop = self._drop(head, filename) if method == "GET" else None
            self._send(status, headers, data if method == "GET" else b"", len(data), drop)

        def _drop(self, repo_id: str, filename: str) -> int | None:
            return hub._take_drop(repo_id, filename)

        # ----------------------------------------------------------------------------------

        def _json(self, body) -> None:
            data = json.dumps(body).encode()
            self._send(200, {"Content-Type": "application/json"}, data if self.command == "GET" else b"", len(data))

        def _error(self, status: int, code: str, message: str, sha: str | None = None) -> None:
            headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
            if sha is not None:
                headers["X-Repo-Commit"] = sha
            data = json.dumps({"error": message}).encode()
            self._send(status, headers, data if self.command == "GET" else b"", len(data))

        def _send(self, status: int, headers: dict, body: bytes, length: int, drop: int | None = None) -> None:
            self.request_record.status = status
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.send_header("Connection", "close")  # no pooled connection outlives stop()
            self.end_headers()
            self.close_connection = True
            if drop is None:
                self.wfile.write(body)
                return
            self.wfile.write(body[:drop])  # then the connection breaks mid-body
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def _tree(files: dict[str, bytes], below: str, recursive: bool) -> list[dict]:
    prefix = f"{below.strip('/')}/" if below.strip("/") else ""
    entries: dict[str, dict] = {}
    for name in sorted(files):
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if "/" in rest and not recursive:
            folder = prefix + rest.split("/")[0]
            entries[folder] = {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()}
            continue
        if recursive:  # the Hub lists the folders too
            parts = rest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, {"type": "directory", "path": folder,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
        data = files[name]
        entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_sha1(data)}
        if _is_lfs(name):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entries[name] = entry
    return list(entries.values())
