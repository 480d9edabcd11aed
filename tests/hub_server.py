"""A stand-in Hugging Face Hub on 127.0.0.1 for the `ettin push` tests.

The real Hub is unreachable from the test machine, so the tests start this server on a free loopback port and
point `HF_ENDPOINT` at it. It implements the HTTP endpoints that huggingface_hub 2.4 calls for `create_repo`,
`create_branch`, `repo_info`, `list_repo_refs` and `create_commit` / `preupload_lfs_files` / `upload_folder`
with the legacy LFS transfer (Xet is switched off in the client with `HF_HUB_DISABLE_XET=1`):

- `POST /api/repos/create`                                   create a repo (409 when it exists)
- `GET  /api/{type}s/{ns}/{name}[/revision/{rev}]`           repo info (sha, private, siblings)
- `GET  /api/{type}s/{ns}/{name}/refs`                       branches
- `POST /api/{type}s/{ns}/{name}/branch/{branch}`            create a branch from main
- `POST /api/validate-yaml`                                  README front-matter check
- `POST /api/{type}s/{ns}/{name}/preupload/{rev}`            upload mode (lfs/regular) and remote oid per file
- `POST /[{type}s/]{ns}/{name}.git/info/lfs/objects/batch`   LFS batch: upload actions (basic or multipart)
- `PUT  /lfs-upload/{oid}` and `/lfs-upload/{oid}/part/{n}`   the "S3" side of an LFS upload
- `POST /lfs-upload/{oid}/complete`, `/lfs-verify/{oid}`     multipart completion, verify
- `POST /api/{type}s/{ns}/{name}/commit/{rev}`               the ndjson commit

Like the Hub, it checks the bearer token (401 for an unknown one, 403 without write access to the namespace),
checks that every LFS object was uploaded with the announced sha256 and size before a commit may name it, and
applies a commit atomically. Everything is recorded (`requests`, `commits`, the files of every branch) so tests
can assert on what reached the "Hub". Tokens are compared in memory and never stored: a request record only
says which user the token belonged to. `fail(...)` injects HTTP errors (transient 5xx, 429) into matching
requests to exercise client retries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# The Hub's default .gitattributes sends these through LFS; anything >= 10 MB or binary-looking too.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".parquet", ".arrow", ".npy",
                ".npz", ".pkl", ".zip", ".gz", ".tar", ".model", ".msgpack")
LFS_SIZE = 10 * 1024 * 1024

_REPO = r"(?P<ns>[\w.-]+)/(?P<name>[\w.-]+)"
_TYPE = r"(?P<type>model|dataset|space)s"


def git_blob_oid(content: bytes) -> str:
    """The git blob id of `content`: what the Hub reports as a regular file's oid."""
    return hashlib.sha1(b"blob " + str(len(content)).encode() + b"\0" + content).hexdigest()


@dataclass
class StoredFile:
    """A file as it sits in a branch of a repo."""

    path: str
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def oid(self) -> str:
        """The oid the preupload endpoint reports: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else git_blob_oid(self.content)


@dataclass
class Commit:
    """One commit applied to a repo branch."""

    oid: str
    repo_type: str
    repo_id: str
    branch: str
    summary: str
    description: str
    files: dict[str, StoredFile]  # path -> file added or updated by this commit
    deleted: list[str]
    parent: str | None


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    owner: str
    branches: dict[str, list[str]] = field(default_factory=dict)  # branch -> commit oids, oldest first
    trees: dict[str, dict[str, StoredFile]] = field(default_factory=dict)  # branch -> path -> file

    def head(self, branch: str) -> str | None:
        commits = self.branches.get(branch)
        return commits[-1] if commits else None


@dataclass
class RequestRecord:
    """One request as received; the token itself is never kept, only whose it was."""

    method: str
    path: str
    query: dict[str, list[str]]
    user: str | None
    status: int = 0


@dataclass
class Failure:
    method: str
    pattern: re.Pattern
    status: int
    remaining: int
    message: str


@dataclass
class Account:
    user: str
    write_namespaces: tuple[str, ...]
    can_write: bool = True


class _Reject(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class StandInHub:
    """The server plus its state; `start()` returns the endpoint URL (`http://127.0.0.1:PORT`)."""

    def __init__(self, multipart_threshold: int = 1 << 62, multipart_chunk: int = 64 * 1024):
        self.accounts: dict[str, Account] = {}
        self.multipart_threshold = multipart_threshold
        self.multipart_chunk = multipart_chunk
        self.lock = threading.RLock()
        self.reset()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ---------------------------------------------------------------- test-facing API
    def reset(self) -> None:
        """Forget every repo, blob, commit, request and injected failure (accounts stay)."""
        with self.lock:
            self.repos: dict[tuple[str, str], Repo] = {}
            self.blobs: dict[str, bytes] = {}  # sha256 -> content, uploaded through LFS
            self.parts: dict[str, dict[int, bytes]] = {}
            self.commits: list[Commit] = []
            self.requests: list[RequestRecord] = []
            self.failures: list[Failure] = []
            self.yaml_checks: list[str] = []

    def add_account(self, token: str, user: str, write_namespaces: tuple[str, ...] = (),
                    can_write: bool = True) -> None:
        """Accept `token` as `user`, allowed to write under its own name and `write_namespaces`."""
        self.accounts[token] = Account(user, (user, *write_namespaces), can_write)

    def fail(self, method: str, path_regex: str, status: int = 503, times: int = 1,
             message: str = "Service temporarily unavailable") -> None:
        """Answer the next `times` requests matching `method` and `path_regex` with HTTP `status`."""
        with self.lock:
            self.failures.append(Failure(method.upper(), re.compile(path_regex), status, times, message))

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> dict[str, bytes]:
        """path -> content of a branch as it stands now."""
        with self.lock:
            tree = self.repos[(repo_type, repo_id)].trees.get(branch, {})
            return {path: f.content for path, f in tree.items()}

    def file_records(self, repo_id: str, repo_type: str = "model", branch: str = "main") -> dict[str, StoredFile]:
        with self.lock:
            return dict(self.repos[(repo_type, repo_id)].trees.get(branch, {}))

    def commits_to(self, repo_id: str, repo_type: str = "model", branch: str | None = None) -> list[Commit]:
        return [c for c in self.commits if c.repo_id == repo_id and c.repo_type == repo_type
                and (branch is None or c.branch == branch)]

    def materialize(self, repo_id: str, dest: Path, repo_type: str = "model", branch: str = "main") -> Path:
        """Write a branch's files under `dest`, as a clone of the repo would look."""
        for path, content in self.files(repo_id, repo_type, branch).items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return dest

    def stored_bytes(self) -> list[bytes]:
        """Every byte string the server keeps (files, blobs, commit messages): for secrecy checks."""
        with self.lock:
            out = list(self.blobs.values())
            for commit in self.commits:
                out.append(f"{commit.summary}\n{commit.description}".encode())
                out.extend(f.content for f in commit.files.values())
            out.extend(text.encode() for text in self.yaml_checks)
            out.append(json.dumps([r.__dict__ for r in self.requests]).encode())
            return out

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="stand-in-hub", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---------------------------------------------------------------- request handling (under self.lock)
    def account_for(self, authorization: str | None) -> Account | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        return self.accounts.get(authorization[7:].strip())

    def require_write(self, account: Account | None, namespace: str) -> Account:
        if account is None:
            raise _Reject(401, "Invalid credentials in Authorization header")
        if not account.can_write or namespace not in account.write_namespaces:
            raise _Reject(403, f"You don't have the rights to write to the namespace {namespace}")
        return account

    def visible_repo(self, account: Account | None, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and (account is None or repo_id.split("/")[0]
                                               not in account.write_namespaces)):
            raise _Reject(404, "Repository not found", code="RepoNotFound")
        return repo

    def writable_repo(self, account: Account | None, repo_type: str, repo_id: str) -> Repo:
        if account is None:
            raise _Reject(401, "Invalid credentials in Authorization header")
        repo = self.visible_repo(account, repo_type, repo_id)
        self.require_write(account, repo_id.split("/")[0])
        return repo

    def branch_of(self, repo: Repo, revision: str) -> str:
        revision = unquote(revision)
        if revision not in repo.branches:
            raise _Reject(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return revision

    def new_commit(self, repo: Repo, branch: str, summary: str, description: str,
                   files: dict[str, StoredFile], deleted: list[str]) -> Commit:
        parent = repo.head(branch)
        oid = hashlib.sha1(f"{repo.repo_id}{branch}{parent}{summary}{len(self.commits)}".encode()).hexdigest()
        commit = Commit(oid, repo.repo_type, repo.repo_id, branch, summary, description, files, deleted, parent)
        tree = repo.trees.setdefault(branch, {})
        for path in deleted:
            tree.pop(path, None)
        tree.update(files)
        repo.branches.setdefault(branch, []).append(oid)
        self.commits.append(commit)
        return commit


def _repo_url(endpoint: str, repo_type: str, repo_id: str) -> str:
    return f"{endpoint}/{repo_id}" if repo_type == "model" else f"{endpoint}/{repo_type}s/{repo_id}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: StandInHub

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr access log
        pass

    # ---------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: object = None, headers: dict[str, str] | None = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        body = self._body()
        hub = self.state
        endpoint = f"http://{self.headers.get('Host', '127.0.0.1')}"
        with hub.lock:
            account = hub.account_for(self.headers.get("Authorization"))
            record = RequestRecord(self.command, path, query, account.user if account else None)
            hub.requests.append(record)
            failure = next((f for f in hub.failures if f.remaining > 0 and f.method == self.command
                            and f.pattern.search(path)), None)
            if failure is not None:
                failure.remaining -= 1
                record.status = failure.status
                self._send(failure.status, {"error": failure.message}, {"X-Error-Message": failure.message})
                return
            try:
                status, payload, headers = self._route(hub, account, path, query, body, endpoint)
            except _Reject as rej:
                status, headers = rej.status, {"X-Error-Message": rej.message}
                if rej.code:
                    headers["X-Error-Code"] = rej.code
                payload = rej.body if rej.body is not None else {"error": rej.message}
            record.status = status
        self._send(status, payload, headers)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch  # noqa: N815

    # ---------------------------------------------------------------- routes
    def _route(self, hub: StandInHub, account: Account | None, path: str, query: dict, body: bytes,
               endpoint: str) -> tuple[int, object, dict[str, str]]:
        method = self.command
        if method == "GET" and path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if method == "GET" and path == "/api/whoami-v2":
            if account is None:
                raise _Reject(401, "Invalid credentials in Authorization header")
            return 200, {"type": "user", "name": account.user,
                         "orgs": [{"name": ns} for ns in account.write_namespaces[1:]]}, {}
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(hub, account, json.loads(body or b"{}"), endpoint)
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(hub, json.loads(body))
        if m := re.fullmatch(rf"/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)", path):
            return self._preupload(hub, account, m, json.loads(body))
        if m := re.fullmatch(rf"/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)", path):
            return self._commit(hub, account, m, body, endpoint)
        if m := re.fullmatch(rf"/api/{_TYPE}/{_REPO}/branch/(?P<branch>[^/]+)", path):
            return self._create_branch(hub, account, m)
        if m := re.fullmatch(rf"/api/{_TYPE}/{_REPO}/refs", path):
            repo = hub.visible_repo(account, m["type"], f"{m['ns']}/{m['name']}")
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": repo.head(b)} for b in repo.branches]
            return 200, {"branches": branches, "converts": [], "tags": []}, {}
        if m := re.fullmatch(rf"/api/{_TYPE}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", path):
            return self._repo_info(hub, account, m)
        if m := re.fullmatch(rf"/(?:(?P<type>dataset|space)s/)?{_REPO}\.git/info/lfs/objects/batch", path):
            return self._lfs_batch(hub, account, m, json.loads(body), endpoint)
        if m := re.fullmatch(r"/lfs-upload/(?P<oid>[0-9a-f]{64})", path):
            return self._lfs_put(hub, m["oid"], query, body)
        if m := re.fullmatch(r"/lfs-upload/(?P<oid>[0-9a-f]{64})/part/(?P<n>\d+)", path):
            hub.parts.setdefault(m["oid"], {})[int(m["n"])] = body
            return 200, None, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}
        if m := re.fullmatch(r"/lfs-upload/(?P<oid>[0-9a-f]{64})/complete", path):
            return self._lfs_complete(hub, m["oid"], query, json.loads(body))
        if m := re.fullmatch(r"/lfs-verify/(?P<oid>[0-9a-f]{64})", path):
            info = json.loads(body)
            blob = hub.blobs.get(m["oid"])
            if blob is None or len(blob) != info.get("size"):
                raise _Reject(404, f"LFS object {m['oid']} not found or wrong size")
            return 200, {"success": True}, {}
        raise _Reject(404, f"stand-in Hub: no route for {method} {path}")

    def _create_repo(self, hub: StandInHub, account: Account | None, payload: dict, endpoint: str):
        namespace = payload.get("organization") or (account.user if account else None)
        if account is None:
            raise _Reject(401, "Invalid credentials in Authorization header")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        hub.require_write(account, namespace)
        url = _repo_url(endpoint, repo_type, repo_id)
        if (repo_type, repo_id) in hub.repos:
            raise _Reject(409, "You already created this repo", body={"error": "You already created this repo",
                                                                        "url": url})
        repo = Repo(repo_type, repo_id, payload.get("visibility") == "private", account.user)
        hub.repos[(repo_type, repo_id)] = repo
        # A new Hub repo starts with one commit on main holding .gitattributes.
        hub.new_commit(repo, "main", "initial commit", "",
                       {".gitattributes": StoredFile(".gitattributes", b"*.safetensors filter=lfs\n", False)}, [])
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _repo_info(self, hub: StandInHub, account: Account | None, m: re.Match):
        repo = hub.visible_repo(account, m["type"], f"{m['ns']}/{m['name']}")
        branch = hub.branch_of(repo, m["rev"] or "main")
        siblings = [{"rfilename": p} for p in sorted(repo.trees.get(branch, {}))]
        return 200, {"id": repo.repo_id, "_id": repo.repo_id, "sha": repo.head(branch), "private": repo.private,
                     "siblings": siblings, "author": repo.owner, "disabled": False, "gated": False}, {}

    def _create_branch(self, hub: StandInHub, account: Account | None, m: re.Match):
        repo = hub.writable_repo(account, m["type"], f"{m['ns']}/{m['name']}")
        branch = unquote(m["branch"])
        if branch in repo.branches:
            raise _Reject(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = list(repo.branches["main"])
        repo.trees[branch] = dict(repo.trees.get("main", {}))
        return 200, {}, {}

    def _validate_yaml(self, hub: StandInHub, payload: dict):
        content = payload.get("content", "")
        hub.yaml_checks.append(content)
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, flags=re.S)
        if match is None:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}, {}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {exc}"}]}, {}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a YAML mapping"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _preupload(self, hub: StandInHub, account: Account | None, m: re.Match, payload: dict):
        repo = hub.writable_repo(account, m["type"], f"{m['ns']}/{m['name']}")
        branch = hub.branch_of(repo, m["rev"])
        tree = repo.trees.get(branch, {})
        files = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = (item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_SIZE or b"\x00" in sample)
            existing = tree.get(item["path"])
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": existing.oid if existing is not None and existing.lfs == lfs else None})
        return 200, {"files": files, "commitOid": repo.head(branch)}, {}

    def _lfs_batch(self, hub: StandInHub, account: Account | None, m: re.Match, payload: dict, endpoint: str):
        hub.writable_repo(account, m["type"] or "model", f"{m['ns']}/{m['name']}")
        if payload.get("operation") != "upload":
            raise _Reject(400, "only uploads are supported")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if oid in hub.blobs and len(hub.blobs[oid]) == size:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, nothing to upload
                continue
            signature = secrets.token_hex(8)  # stands for an S3 presigned URL
            verify = {"href": f"{endpoint}/lfs-verify/{oid}", "header": {}}
            if size > hub.multipart_threshold:
                chunk = hub.multipart_chunk
                n_parts = -(-size // chunk)
                header = {"chunk_size": str(chunk)}
                header.update({f"{i:05d}": f"{endpoint}/lfs-upload/{oid}/part/{i}?X-Amz-Signature={signature}"
                               for i in range(1, n_parts + 1)})
                upload = {"href": f"{endpoint}/lfs-upload/{oid}/complete?size={size}", "header": header}
            else:
                upload = {"href": f"{endpoint}/lfs-upload/{oid}?size={size}&X-Amz-Signature={signature}"}
            objects.append({"oid": oid, "size": size, "authenticated": True,
                            "actions": {"upload": upload, "verify": verify}})
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _store_blob(self, hub: StandInHub, oid: str, query: dict, content: bytes) -> None:
        size = int(query.get("size", ["-1"])[0])
        if hashlib.sha256(content).hexdigest() != oid or len(content) != size:
            raise _Reject(400, f"uploaded content does not match oid {oid} / size {size}")
        hub.blobs[oid] = content

    def _lfs_put(self, hub: StandInHub, oid: str, query: dict, body: bytes):
        self._store_blob(hub, oid, query, body)
        return 200, None, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}

    def _lfs_complete(self, hub: StandInHub, oid: str, query: dict, payload: dict):
        parts = hub.parts.pop(oid, {})
        numbers = [p["partNumber"] for p in payload["parts"]]
        if payload.get("oid") != oid or numbers != sorted(parts):
            raise _Reject(400, "multipart completion does not match the uploaded parts")
        for part in payload["parts"]:
            if part["etag"].strip('"') != hashlib.md5(parts[part["partNumber"]]).hexdigest():
                raise _Reject(400, f"etag mismatch for part {part['partNumber']}")
        self._store_blob(hub, oid, query, b"".join(parts[n] for n in numbers))
        return 200, {}, {}

    def _commit(self, hub: StandInHub, account: Account | None, m: re.Match, body: bytes, endpoint: str):
        repo = hub.writable_repo(account, m["type"], f"{m['ns']}/{m['name']}")
        branch = hub.branch_of(repo, m["rev"])
        if self.headers.get("Content-Type") != "application/x-ndjson":
            raise _Reject(400, "a commit is sent as application/x-ndjson")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _Reject(400, "the first ndjson line must be the commit header")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != repo.head(branch):
            raise _Reject(412, "A commit has happened since. Please refresh and try again.")
        files: dict[str, StoredFile] = {}
        deleted: list[str] = []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                if value.get("encoding") != "base64":
                    raise _Reject(400, "regular files are sent base64-encoded")
                files[value["path"]] = StoredFile(value["path"], base64.b64decode(value["content"]), lfs=False)
            elif line["key"] == "lfsFile":
                blob = hub.blobs.get(value["oid"])
                if blob is None or len(blob) != value.get("size", len(blob)):
                    raise _Reject(400, f"LFS object for {value['path']} was never uploaded ({value['oid']})")
                files[value["path"]] = StoredFile(value["path"], blob, lfs=True)
            elif line["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                raise _Reject(400, f"unsupported commit operation {line['key']}")
        commit = hub.new_commit(repo, branch, header.get("summary", ""), header.get("description", ""),
                                files, deleted)
        url = f"{_repo_url(endpoint, repo.repo_type, repo.repo_id)}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None}, {}
