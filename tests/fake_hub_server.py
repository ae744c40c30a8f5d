"""A stand-in for the model hub on loopback, serving local folders as branches of one repo,
for the hub path of replay (`HubFiles`, `list_repo_refs`, `AutoTokenizer`) to run for real
with HF_ENDPOINT pointing here. It answers the few API routes huggingface_hub calls (repo
info, refs, tree listing) and file reads with HTTP Range, and counts the bytes it sends per
file: an independent measure of what a norms-only replay downloads.

    python tests/fake_hub_server.py ORG/NAME FOLDER PORT_FILE   # serves FOLDER/<branch>/...
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<what>revision|tree|refs)"
                 r"(?:/(?P<rev>[^/]+))?(?:/(?P<path>.*))?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class Hub:
    def __init__(self, repo: str, folder: Path):
        self.repo, self.folder = repo, folder
        self.sent: dict[str, int] = {}  # "<branch>/<file>" -> bytes sent
        self.lock = threading.Lock()

    def branches(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir())

    def branch(self, rev: str) -> str:
        """A branch name, or a commit the client resolved it to (the repo-info's sha)."""
        return {_sha(b): b for b in self.branches()}.get(rev, rev)

    def file(self, rev: str, path: str) -> Path | None:
        target = (self.folder / self.branch(rev) / path).resolve()
        inside = self.folder.resolve() in target.parents
        return target if inside and target.is_file() else None


def handler(hub: Hub):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, value, status: int = 200) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _missing(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self):
            self.do_GET(head=True)

        def do_GET(self, head: bool = False):
            path = unquote(urlparse(self.path).path)
            api, resolve = API.match(path), RESOLVE.match(path)
            if api and api["repo"] == hub.repo:
                return self._api(api["what"], api["rev"], api["path"] or "")
            if resolve and resolve["repo"] == hub.repo:
                return self._file(resolve["rev"], resolve["path"], head)
            self._missing()

        def _api(self, what: str, rev: str | None, path: str) -> None:
            if what == "refs":
                return self._json({"branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": _sha(b)}
                    for b in hub.branches()], "tags": [], "converts": []})
            rev = hub.branch(rev or "")
            if rev not in hub.branches():
                return self._json({"error": "Revision not found"}, 404)
            folder = hub.folder / rev / path
            if what == "revision":
                return self._json({"id": hub.repo, "sha": _sha(rev), "siblings": [
                    {"rfilename": f.name} for f in sorted(folder.iterdir())]})
            if not folder.is_dir():
                return self._missing()
            self._json([{"type": "file" if f.is_file() else "directory",
                         "path": f"{path}/{f.name}".lstrip("/"), "oid": _sha(f.name),
                         "size": f.stat().st_size if f.is_file() else 0}
                        for f in sorted(folder.iterdir())])

        def _file(self, rev: str, path: str, head: bool) -> None:
            target = hub.file(rev, path)
            if target is None:
                return self._missing()
            size = target.stat().st_size
            begin, end = 0, size - 1
            wanted = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if wanted:
                begin = int(wanted[1])
                end = min(int(wanted[2]), size - 1) if wanted[2] else size - 1
            self.send_response(206 if wanted else 200)
            self.send_header("Content-Length", str(end - begin + 1))
            self.send_header("ETag", f'"{_sha(rev + path)}"')
            self.send_header("X-Repo-Commit", _sha(hub.branch(rev)))
            self.send_header("Accept-Ranges", "bytes")
            if wanted:
                self.send_header("Content-Range", f"bytes {begin}-{end}/{size}")
            self.end_headers()
            if head:
                return
            with open(target, "rb") as f:
                f.seek(begin)
                data = f.read(end - begin + 1)
            with hub.lock:
                key = f"{hub.branch(rev)}/{path}"
                hub.sent[key] = hub.sent.get(key, 0) + len(data)
            self.wfile.write(data)
    return Handler


def serve(repo: str, folder: Path) -> tuple[http.server.ThreadingHTTPServer, Hub]:
    hub = Hub(repo, folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(hub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hub


if __name__ == "__main__":
    srv, _ = serve(sys.argv[1], Path(sys.argv[2]))
    Path(sys.argv[3]).write_text(str(srv.server_port))
    threading.Event().wait()
