"""A small, real, in-process stand-in for the Hugging Face Hub HTTP API (stdlib only).

`LocalHubServer` listens on 127.0.0.1 (free port, background thread) and answers the requests that
`huggingface_hub` (2.4.x) and `transformers` (5.x) send for pushing a folder and loading it back:

    POST      /api/validate-yaml                         upload_folder's check of a README.md's YAML header
    POST      /api/repos/create                          HfApi.create_repo (409 if it exists -> exist_ok)
    GET       /api/models/{ns}/{name}[/revision/{rev}]   model_info / repo_info: `sha` + `siblings`
    GET       /api/models/{ns}/{name}/tree/{rev}[/{dir}] list_repo_tree, used by snapshot_download
    POST      /api/models/{ns}/{name}/preupload/{rev}    upload mode: always "regular", plus the git oid of
                                                         the file already in the repo (unchanged files are
                                                         then dropped from the commit by the client)
    POST      /api/models/{ns}/{name}/commit/{rev}       ndjson commit: "header", "file" (base64 inline),
                                                         "deletedFile", "deletedFolder"
    HEAD, GET /{ns}/{name}/resolve/{rev}/{path}          file download: ETag, X-Repo-Commit, Content-Length
                                                         (single `Range: bytes=a-b` also supported)

Why "regular" only: the client uploads a file through Git-LFS or Xet only when the preupload answer says
"lfs". Answering "regular" makes it send every file base64-encoded inside the commit payload, so no LFS
batch or Xet CAS endpoint is needed, whether `hf_xet` is installed or not. A commit that still contains an
"lfsFile" line is refused with a 400. Downloads never carry `X-Xet-Hash`, so the client always takes the
plain HTTP GET path. Errors carry the `X-Error-Code` header (RepoNotFound, RevisionNotFound,
EntryNotFound) that `hf_raise_for_status` maps to the usual exceptions.

Scope: model repos with `namespace/name` ids, one branch ("main"); a revision may also be any full or
abbreviated commit sha. Any bearer token is accepted. Unknown routes get a 404 and are listed in
`.unhandled`. Inspect `.repos`, `.commits`, `.requests` and `.tokens` in tests (see `LocalHubServer`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ACTION = r"(?P<action>revision|tree|preupload|commit)/(?P<rev>[^/]+)(?P<rest>/.*)?"
_API = re.compile(rf"^/api/models/{_REPO}(?:/{_ACTION})?$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a regular file: what the Hub reports as `oid`/ETag (cf. `utils.sha.git_hash`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class LocalHubServer:
    """Local Hub; use as `with LocalHubServer() as hub: ...` (or `.start()` / `.stop()`).

    Attributes (all guarded by `.lock`, read them once the client call has returned):
        endpoint: "http://127.0.0.1:<port>", to use as `HF_ENDPOINT` / `HfApi(endpoint=...)`.
        repos:    {repo_id: {path_in_repo: bytes}}, the current content of each repo's "main".
        commits:  one dict per commit received, in order: {"repo_id", "oid", "parent", "message",
                  "description", "files": {path: bytes} (added or changed), "deleted": [path, ...]}.
                  Creating a repo makes an empty initial commit that is *not* listed here.
        requests: (method, path with query string, {lower-cased header name: value}) of every request.
        unhandled: (method, path) of requests that matched no route (answered 404).
        private:  {repo_id: bool} visibility asked for at creation.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.lock = threading.Lock()
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[dict] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.private: dict[str, bool] = {}
        self.failing_commits: set[int] = set()  # 1-based numbers of commit requests answered with a 400 (faults)
        self.commit_requests = 0
        self._snapshots: dict[str, dict[str, dict[str, bytes]]] = {}  # repo_id -> commit sha -> files
        self._heads: dict[str, str] = {}  # repo_id -> sha of "main"
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self.endpoint = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "LocalHubServer":
        serve = self._httpd.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.05,), name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LocalHubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def tokens(self) -> list[str]:
        """Bearer tokens received, one per request that carried an `Authorization: Bearer ...` header."""
        auth = (headers.get("authorization", "") for _, _, headers in self.requests)
        return [value[len("Bearer ") :] for value in auth if value.startswith("Bearer ")]

    # -- repository state (callers hold self.lock) -------------------------------------------------
    def _new_commit(self, repo_id: str, files: dict[str, bytes], message: str) -> str:
        parent = self._heads.get(repo_id, "")
        digest = hashlib.sha1(f"{repo_id}\0{parent}\0{message}\0{len(self._snapshots.get(repo_id, {}))}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha1(files[path])}\0".encode())
        sha = digest.hexdigest()
        self._snapshots.setdefault(repo_id, {})[sha] = files
        self._heads[repo_id] = sha
        self.repos[repo_id] = files
        return sha

    def _resolve(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]]:
        if repo_id not in self._snapshots:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        if revision == "main":
            sha = self._heads[repo_id]
            return sha, self._snapshots[repo_id][sha]
        matches = [sha for sha in self._snapshots[repo_id] if len(revision) >= 7 and sha.startswith(revision)]
        if len(matches) != 1:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return matches[0], self._snapshots[repo_id][matches[0]]

    # -- endpoints: each returns (status, headers, body bytes) --------------------------------------
    def create_repo(self, payload: dict):
        if payload.get("type") not in (None, "model"):
            raise HubError(400, None, "LocalHubServer only hosts model repos")
        if not payload.get("organization") or not payload.get("name"):
            raise HubError(400, None, "repo id must be 'namespace/name'")
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self._snapshots:
            return 409, {}, {"error": "You already created this model repo", "url": url}
        self.private[repo_id] = payload.get("visibility") == "private" or payload.get("private") is True
        self._new_commit(repo_id, {}, "initial commit")
        return 200, {}, {"url": url, "name": repo_id}

    def model_info(self, repo_id: str, revision: str):
        sha, files = self._resolve(repo_id, revision)
        siblings = [{"rfilename": p, "size": len(b), "blobId": git_blob_sha1(b)} for p, b in sorted(files.items())]
        now = _now()
        info = {"_id": sha[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": sha,
                "private": self.private[repo_id], "disabled": False, "gated": False, "downloads": 0, "likes": 0,
                "tags": [], "lastModified": now, "createdAt": now, "siblings": siblings}
        return 200, {}, info

    def tree(self, repo_id: str, revision: str, folder: str, recursive: bool):
        _, files = self._resolve(repo_id, revision)
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        below = sorted(p[len(prefix) :] for p in files if p.startswith(prefix))
        if prefix and not below:
            raise HubError(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        entries, folders = [], set()
        for rel in below:
            parts = rel.split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add("/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                data = files[prefix + rel]
                entries.append({"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": prefix + rel})
        for name in sorted(folders):
            tree_oid = hashlib.sha1(f"tree {prefix}{name}".encode()).hexdigest()
            entries.append({"type": "directory", "oid": tree_oid, "size": 0, "path": prefix + name})
        return 200, {}, entries

    def preupload(self, repo_id: str, revision: str, payload: dict):
        _, files = self._resolve(repo_id, revision)
        answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                   "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
                  for f in payload.get("files", [])]
        return 200, {}, {"files": answer, "commitOid": self._heads[repo_id]}

    def commit(self, repo_id: str, revision: str, body: bytes, query: dict):
        self.commit_requests += 1
        if self.commit_requests in self.failing_commits:
            raise HubError(400, None, f"injected failure of commit request {self.commit_requests}")
        head, files = self._resolve(repo_id, revision)
        if revision != "main" or "create_pr" in query:
            raise HubError(400, None, "LocalHubServer only commits to the 'main' branch (no PRs)")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, None, "commit payload must start with a 'header' line")
        header = lines[0]["value"]
        if header.get("parentCommit") and not head.startswith(header["parentCommit"]):
            raise HubError(412, None, f"parentCommit {header['parentCommit']} is not the head of main ({head})")
        new_files, changed, deleted = dict(files), {}, []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = value.get("path", "").strip("/")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, None, f"unsupported encoding for {path}: {value.get('encoding')}")
                new_files[path] = changed[path] = base64.b64decode(value["content"])
            elif key == "deletedFile" and path in new_files:
                del new_files[path]
                deleted.append(path)
            elif key == "deletedFolder":
                for p in [p for p in new_files if p.startswith(path + "/")]:
                    del new_files[p]
                    deleted.append(p)
            elif key == "deletedFile":
                raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
            else:  # "lfsFile" included: we never asked for LFS, so there is no blob to point at
                raise HubError(400, None, f"unsupported commit operation {key!r} for {path}")
        sha = self._new_commit(repo_id, new_files, header.get("summary", ""))
        self.commits.append({"repo_id": repo_id, "oid": sha, "parent": head, "message": header.get("summary", ""),
                             "description": header.get("description", ""), "files": changed, "deleted": deleted})
        url = f"{self.endpoint}/{repo_id}/commit/{sha}"
        return 200, {}, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None}

    def resolve(self, repo_id: str, revision: str, path: str, range_header: str | None):
        sha, files = self._resolve(repo_id, revision)
        if path not in files:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": sha})
        data = files[path]
        headers = {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        match = _RANGE.match(range_header or "")
        if match and data and (match.group(1) or match.group(2)):
            start, end = match.groups()
            first = int(start) if start else max(len(data) - int(end), 0)
            last = min(int(end), len(data) - 1) if start and end else len(data) - 1
            if first > last:
                raise HubError(416, None, f"unsatisfiable range {range_header}")
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            return 206, headers, data[first : last + 1]
        return 200, headers, data


def _make_handler(hub: LocalHubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "LocalHub/1.0"

        def log_message(self, format, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        @staticmethod
        def _validate_yaml(content: str):
            if content.startswith("---"):
                front_matter = content.split("---", 2)[1]
                try:
                    import yaml

                    yaml.safe_load(front_matter)
                except Exception as error:  # noqa: BLE001 - any parse failure is the client's 400
                    return 400, {}, {"errors": [{"message": str(error)}], "warnings": []}
            return 200, {}, {"errors": [], "warnings": []}

        def do_POST(self):
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            with hub.lock:
                hub.requests.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}))
                try:
                    status, headers, payload = self._route(method, url.path, query, body)
                except HubError as err:
                    headers = {**err.headers, "X-Error-Message": err.message}
                    if err.code:
                        headers["X-Error-Code"] = err.code
                    status, payload = err.status, {"error": err.message}
                except Exception as err:  # a bug here must surface as a failing client call, not a hang
                    status, headers, payload = 500, {}, {"error": f"{type(err).__name__}: {err}"}
            if not isinstance(payload, bytes):
                payload = json.dumps(payload).encode()
                headers.setdefault("Content-Type", "application/json")
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                self.send_header(name, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)

        def _route(self, method: str, path: str, query: dict, body: bytes):
            if method == "POST" and path == "/api/validate-yaml":
                # upload_folder checks a README.md's YAML front matter here; this server accepts what parses.
                content = json.loads(body or b"{}").get("content", "")
                return self._validate_yaml(content)
            if method == "POST" and path == "/api/repos/create":
                return hub.create_repo(json.loads(body or b"{}"))
            api, resolve = _API.match(path), _RESOLVE.match(path)
            if api:
                repo_id, action = unquote(api["repo"]), api["action"]
                revision, rest = unquote(api["rev"] or "main"), unquote(api["rest"] or "")
                if method == "GET" and action in (None, "revision") and not rest:
                    return hub.model_info(repo_id, revision)
                if method == "GET" and action == "tree":
                    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                    return hub.tree(repo_id, revision, rest, recursive)
                if method == "POST" and action == "preupload" and not rest:
                    return hub.preupload(repo_id, revision, json.loads(body or b"{}"))
                if method == "POST" and action == "commit" and not rest:
                    return hub.commit(repo_id, revision, body, query)
            if resolve and method in ("GET", "HEAD"):
                return hub.resolve(unquote(resolve["repo"]), unquote(resolve["rev"]), unquote(resolve["path"]),
                                   self.headers.get("Range"))
            hub.unhandled.append((method, self.path))
            raise HubError(404, None, f"LocalHubServer does not implement {method} {path}")

    return Handler
