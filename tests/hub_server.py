"""A small Hugging Face Hub-compatible HTTP server for tests.

It keeps repositories in memory and serves the part of the Hub HTTP API that `huggingface_hub`
and `transformers` use to publish and fetch a model:

- `POST /api/repos/create`, `POST /api/repos/delete`, `POST /api/validate-yaml`;
- `POST /api/{type}s/{repo}/preupload/{rev}` (always answers upload mode "regular", so every file
  travels inline, base64-encoded, in the commit payload) and `POST /api/{type}s/{repo}/commit/{rev}`
  (NDJSON: header, `file`, `deletedFile`, `deletedFolder`);
- `GET /api/{type}s/{repo}[/revision/{rev}]` (repository info with `sha`, `siblings` and the
  README metadata as `cardData`), `.../tree/{rev}[/{path}]`, `.../paths-info/{rev}`, `.../refs`,
  `.../commits/{rev}`;
- `GET`/`HEAD` `/[{type}s/]{repo}/resolve/{rev}/{path}` with `ETag`, `X-Repo-Commit`,
  `Content-Length` and byte ranges, and the Hub's `X-Error-Code` values on errors.

Not covered: LFS and Xet storage (an `lfsFile` commit entry is refused), authentication and
private repositories (tokens are accepted and ignored), pull requests, tags, redirects to a CDN, and
pagination of long listings. Commit ids are SHA-1 digests of the commit's content but not git
objects; file ids are git blob ids, as on the Hub.

The server listens on 127.0.0.1 only, on a free port, in a daemon thread; use it as a context
manager so it stops when the block ends.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["HubServer", "HubState"]

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
# The first lines of the .gitattributes the Hub writes into every new repository.
_INITIAL_GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
"""


class HubError(Exception):
    """An error answered to the client with the Hub's status code and `X-Error-Code`."""

    def __init__(
        self, status: int, message: str, error_code: str | None = None, commit: str | None = None, **body: str
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.commit = commit
        self.body = {"error": message, **body}


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    # The Hub's date format: milliseconds and a trailing Z.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class HubCommit:
    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, bytes]


@dataclass
class HubRepo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, HubCommit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> HubCommit:
        """The commit a branch name or a full commit id points to."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if _COMMIT_ID.match(revision) and revision in self.commits:
            return self.commits[revision]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def history(self, revision: str) -> list[HubCommit]:
        """Commits reachable from `revision`, newest first."""
        commit, history = self.resolve(revision), []
        while commit is not None:
            history.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return history


class HubState:
    """The repositories of one server, guarded by a lock (the server answers requests in threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], HubRepo] = {}

    def get(self, repo_type: str, repo_id: str) -> HubRepo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool, url: str) -> HubRepo:
        if (repo_type, repo_id) in self.repos:
            # Like the Hub, the conflict answer carries the existing repository's URL.
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        repo = HubRepo(repo_type=repo_type, repo_id=repo_id, private=private)
        self.repos[(repo_type, repo_id)] = repo
        self.commit(repo, "main", "initial commit", "", {".gitattributes": _INITIAL_GITATTRIBUTES}, [], None)
        return repo

    def commit(
        self,
        repo: HubRepo,
        branch: str,
        title: str,
        message: str,
        additions: dict[str, bytes],
        deletions: list[tuple[str, bool]],
        parent_commit: str | None,
    ) -> HubCommit:
        """Apply additions and deletions (path, is_folder) on top of `branch` as one new commit."""
        parent = repo.commits.get(repo.branches[branch]) if branch in repo.branches else None
        if parent_commit is not None and (parent is None or parent.oid != parent_commit):
            raise HubError(412, f"parentCommit {parent_commit} is not the head of {branch}")
        files = dict(parent.files) if parent else {}
        for path, is_folder in deletions:
            _delete_path(files, path, is_folder)
        files.update(additions)
        date = _now()
        digest = hashlib.sha1(json.dumps([parent.oid if parent else None, title, message, date]).encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_id(files[path])}\0".encode())
        commit = HubCommit(digest.hexdigest(), parent.oid if parent else None, title, message, date, files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


def _delete_path(files: dict[str, bytes], path: str, is_folder: bool) -> None:
    prefix = path.rstrip("/") + "/"
    doomed = [name for name in files if name.startswith(prefix)] if is_folder else [path] if path in files else []
    if not doomed:
        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
    for name in doomed:
        del files[name]


def _check_path_in_repo(path: object) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise HubError(400, f"Invalid path in repository: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")) or path.startswith(".git/"):
        raise HubError(400, f"Invalid path in repository: {path!r}")
    return path


def _file_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}


def _folder_entry(path: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


def tree_entries(files: dict[str, bytes], path: str, recursive: bool) -> list[dict]:
    """The Hub's tree listing of `path` ("" for the root): files and folders, sorted by path."""
    prefix = path.rstrip("/") + "/" if path else ""
    if path and path in files:
        raise HubError(400, f"{path} is a file, not a folder")
    entries: dict[str, dict] = {}
    for name, data in files.items():
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for level in range(1, min(depth, len(parts) - 1) + 1):
            folder = prefix + "/".join(parts[:level])
            entries.setdefault(folder, _folder_entry(folder))
        if recursive or len(parts) == 1:
            entries[name] = _file_entry(name, data)
    if path and not entries:
        raise HubError(404, f"{path} does not exist on this revision", "EntryNotFound")
    return [entries[name] for name in sorted(entries)]


def card_metadata(files: dict[str, bytes]) -> dict | None:
    """The YAML metadata block of README.md, as the Hub exposes it in `cardData`."""
    readme = files.get("README.md")
    if readme is None:
        return None
    match = _FRONT_MATTER.match(readme.decode("utf-8"))
    metadata = yaml.safe_load(match.group(1)) if match else None
    return metadata if isinstance(metadata, dict) else None


def validate_card_metadata(content: str) -> tuple[list[str], list[str]]:
    """Errors and warnings for a README's YAML metadata, including the shape of `model-index`."""
    match = _FRONT_MATTER.match(content)
    if match is None:
        return [], ["Empty or missing yaml metadata in repo card"]
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        return [f"Invalid YAML in repo card: {error}"], []
    if not isinstance(metadata, dict):
        return ["YAML metadata must be a mapping"], []
    errors = []
    for key in ("tags", "datasets", "metrics"):
        value = metadata.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            errors.append(f'"{key}" must be a list of strings')
    for key in ("license", "library_name", "pipeline_tag"):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(f'"{key}" must be a string')
    errors.extend(_model_index_errors(metadata.get("model-index")))
    return errors, []


def _model_index_errors(model_index: object) -> list[str]:
    if model_index is None:
        return []
    if not isinstance(model_index, list) or not model_index:
        return ['"model-index" must be a non-empty list']
    errors = []
    for model in model_index:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append('"model-index[].name" must be a string')
            continue
        for result in model.get("results") or [None]:
            errors.extend(_result_errors(result))
    return errors


def _result_errors(result: object) -> list[str]:
    if not isinstance(result, dict):
        return ['"model-index[].results" must be a non-empty list of mappings']
    errors = []
    if not isinstance(result.get("task"), dict) or not isinstance(result["task"].get("type"), str):
        errors.append('"model-index[].results[].task.type" must be a string')
    dataset = result.get("dataset")
    if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("name", "type")):
        errors.append('"model-index[].results[].dataset" needs "name" and "type" strings')
    metrics = result.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        return errors + ['"model-index[].results[].metrics" must be a non-empty list']
    for metric in metrics:
        if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
            errors.append('"model-index[].results[].metrics[]" needs "type" and "value"')
    return errors


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HubHTTPServer

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # requests are recorded in `HubServer.requests` instead of printed

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        body = self._read_body()
        self.server.hub.requests.append((method, self.path))
        try:
            with self.server.hub.state.lock:
                status, headers, payload = self._route(method, url.path, body)
        except HubError as error:
            self._send_error(error)
            return
        except Exception as error:  # a server bug must reach the test as a 500, not a hang
            self._send_error(HubError(500, f"{type(error).__name__}: {error}"))
            raise
        self._send(status, headers, payload, include_body=method != "HEAD")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().strip().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, headers: dict[str, str], payload: bytes, include_body: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if include_body:
            self.wfile.write(payload)

    def _send_error(self, error: HubError) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": error.message}
        if error.error_code:
            headers["X-Error-Code"] = error.error_code
        if error.commit:
            headers["X-Repo-Commit"] = error.commit
        self._send(error.status, headers, json.dumps(error.body).encode(), self.command != "HEAD")

    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if parts[0] == "api":
            return self._route_api(method, parts[1:], body)
        repo_type = REPO_TYPES.get(parts[0]) if parts[0] in ("datasets", "spaces") else None
        parts = parts[1:] if repo_type else parts
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type or "model", "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        self.server.hub.unhandled.append((method, self.path))
        raise HubError(404, f"Not served by this test server: {method} {path}")

    def _route_api(self, method: str, parts: list[str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method == "POST" and parts == ["repos", "create"]:
            return self._create_repo(json.loads(body))
        if method in ("POST", "DELETE") and parts == ["repos", "delete"]:
            return self._delete_repo(json.loads(body))
        if method == "POST" and parts == ["validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if len(parts) >= 3 and parts[0] in REPO_TYPES:
            repo = self.server.hub.state.get(REPO_TYPES[parts[0]], f"{parts[1]}/{parts[2]}")
            route = (method, *parts[3:4])
            handler = self._REPO_ROUTES.get(route)
            if handler is not None:
                return handler(self, repo, parts[4:], body)
        self.server.hub.unhandled.append((method, self.path))
        raise HubError(404, f"Not served by this test server: {method} /api/{'/'.join(parts)}")

    # Repository management

    def _create_repo(self, payload: dict) -> tuple[int, dict[str, str], bytes]:
        organization, name = payload.get("organization"), payload.get("name")
        if not organization:
            raise HubError(400, "This test server has no user accounts: give the repository a namespace")
        for part in (organization, name):
            if not isinstance(part, str) or not _REPO_NAME.match(part) or "--" in part or ".." in part:
                raise HubError(400, f"Invalid repository name part: {part!r}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{organization}/{name}"
        url = f"{self.server.hub.endpoint}/{'' if repo_type == 'model' else f'{repo_type}s/'}{repo_id}"
        self.server.hub.state.create_repo(repo_type, repo_id, payload.get("visibility") == "private", url)
        return _json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict) -> tuple[int, dict[str, str], bytes]:
        repo_id = f"{payload.get('organization')}/{payload.get('name')}"
        repo = self.server.hub.state.get(payload.get("type") or "model", repo_id)
        del self.server.hub.state.repos[(repo.repo_type, repo.repo_id)]
        return _json(200, {})

    def _validate_yaml(self, payload: dict) -> tuple[int, dict[str, str], bytes]:
        errors, warnings = validate_card_metadata(payload.get("content", ""))
        body = {"errors": [{"message": m} for m in errors], "warnings": [{"message": m} for m in warnings]}
        return _json(400 if errors else 200, body)

    # Repository reads

    def _info(self, repo: HubRepo, parts: list[str], body: bytes):
        if parts and parts[0] != "revision" or len(parts) not in (0, 2):
            raise HubError(404, f"Not served by this test server: {self.path}")
        commit = repo.resolve(parts[1] if parts else "main")
        with_blobs = self.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [
            {"rfilename": path, **({"size": len(data), "blobId": git_blob_id(data)} if with_blobs else {})}
            for path, data in sorted(commit.files.items())
        ]
        metadata = card_metadata(commit.files) or {}
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.history(commit.oid)[-1].date,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "tags": list(metadata.get("tags") or []),
            "siblings": siblings,
        }
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, library_name=metadata.get("library_name"))
            info.update(pipeline_tag=metadata.get("pipeline_tag"), config=_config_summary(commit.files))
            if metadata.get("model-index"):
                info["model-index"] = metadata["model-index"]
        if metadata:
            info["cardData"] = metadata
        return _json(200, info)

    def _tree(self, repo: HubRepo, parts: list[str], body: bytes):
        if not parts:
            raise HubError(404, "A revision is needed")
        commit = repo.resolve(parts[0])
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        return _json(200, tree_entries(commit.files, "/".join(parts[1:]), recursive))

    def _paths_info(self, repo: HubRepo, parts: list[str], body: bytes):
        commit = repo.resolve(parts[0] if parts else "main")
        form = json.loads(body) if body.startswith(b"{") else parse_qs(body.decode())
        paths = form.get("paths", [])
        folders = {"/".join(name.split("/")[:i]) for name in commit.files for i in range(1, name.count("/") + 1)}
        entries = [_file_entry(p, commit.files[p]) if p in commit.files else _folder_entry(p) for p in paths]
        return _json(200, [e for e in entries if e["path"] in commit.files or e["path"] in folders])

    def _refs(self, repo: HubRepo, parts: list[str], body: bytes):
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid} for n, oid in repo.branches.items()]
        return _json(200, {"branches": branches, "tags": [], "converts": [], "pullRequests": []})

    def _commits(self, repo: HubRepo, parts: list[str], body: bytes):
        history = repo.history(parts[0] if parts else "main")
        items = [
            {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": "hub-test"}]}
            for c in history
        ]
        return _json(200, items)

    # Uploads

    def _preupload(self, repo: HubRepo, parts: list[str], body: bytes):
        self._refuse_pull_requests()
        head = repo.resolve(parts[0] if parts else "main")
        files = []
        for entry in json.loads(body).get("files", []):
            path = _check_path_in_repo(entry.get("path"))
            remote = head.files.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_id(remote) if remote is not None else None,
                }
            )
        return _json(200, {"files": files})

    def _commit(self, repo: HubRepo, parts: list[str], body: bytes):
        self._refuse_pull_requests()
        branch = parts[0] if parts else "main"
        if branch not in repo.branches:
            raise HubError(400, f"Commits go to a branch; this test server has no branch {branch!r}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        additions, deletions = _commit_operations(lines[1:])
        if not additions and not deletions:
            raise HubError(400, "Empty commit: no file added or deleted")
        commit = self.server.hub.state.commit(
            repo, branch, header.get("summary") or "", header.get("description") or "",
            additions, deletions, header.get("parentCommit"),
        )
        url_prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        commit_url = f"{self.server.hub.endpoint}/{url_prefix}{repo.repo_id}/commit/{commit.oid}"
        return _json(200, {"success": True, "commitOid": commit.oid, "commitUrl": commit_url, "pullRequestUrl": None})

    def _refuse_pull_requests(self) -> None:
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by this test server")

    _REPO_ROUTES = {
        ("GET",): _info,
        ("GET", "revision"): lambda self, repo, parts, body: self._info(repo, ["revision", *parts], body),
        ("GET", "tree"): _tree,
        ("POST", "paths-info"): _paths_info,
        ("GET", "refs"): _refs,
        ("GET", "commits"): _commits,
        ("POST", "preupload"): _preupload,
        ("POST", "commit"): _commit,
    }

    # File downloads

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str):
        commit = self.server.hub.state.get(repo_type, repo_id).resolve(revision)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit=commit.oid)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_id(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        byte_range = _parse_range(self.headers.get("Range"), len(data))
        if byte_range is None:
            return 200, headers, data
        start, end = byte_range
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return 206, headers, data[start : end + 1]


def _commit_operations(lines: list[dict]) -> tuple[dict[str, bytes], list[tuple[str, bool]]]:
    additions: dict[str, bytes] = {}
    deletions: list[tuple[str, bool]] = []
    for line in lines:
        key, value = line.get("key"), line.get("value") or {}
        path = _check_path_in_repo(value.get("path", "").rstrip("/") if key == "deletedFolder" else value.get("path"))
        if key == "file":
            if value.get("encoding") != "base64":
                raise HubError(400, f"Unsupported file encoding {value.get('encoding')!r} for {path}")
            additions[path] = base64.b64decode(value["content"], validate=True)
        elif key in ("deletedFile", "deletedFolder"):
            deletions.append((path, key == "deletedFolder"))
        elif key == "lfsFile":
            raise HubError(400, f"{path}: LFS and Xet uploads are not supported by this test server")
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")
    return additions, deletions


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=a-b` range, or None for the whole file."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header or "")
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HubError(416, f"Range {header} is outside a file of {size} bytes")
    return start, end


def _config_summary(files: dict[str, bytes]) -> dict | None:
    """The part of config.json the Hub shows in model info."""
    if "config.json" not in files:
        return None
    try:
        config = json.loads(files["config.json"])
    except ValueError:
        return None
    return {key: config[key] for key in ("architectures", "model_type", "auto_map") if key in config}


def _json(status: int, payload) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """Runs the test Hub on 127.0.0.1 in a background thread.

    `endpoint` is the value for `HF_ENDPOINT`; `requests` records every (method, path) served and
    `unhandled` those that fell outside the API above, so a test can tell a missing endpoint from a
    client error.
    """

    def __init__(self):
        self.state = HubState()
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("The test Hub is not running: call start() or use it as a context manager")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._httpd = _HubHTTPServer(("127.0.0.1", 0), _HubRequestHandler)
        self._httpd.hub = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
