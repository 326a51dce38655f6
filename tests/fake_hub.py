"""A Hugging Face Hub on loopback: the endpoints huggingface_hub and diffusers use to list and fetch a
repository's files (model info with sizes, HEAD and GET of a file), over repositories held in memory."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path


def folder_files(folder: Path) -> dict[str, bytes]:
    """A repository from a folder on disk: every file by its path inside it."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


class FakeHub:
    """The two Hub endpoints huggingface_hub uses here: model info with file sizes, and file downloads."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        hub = self
        self.repos = repos
        self.downloads: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _file(self) -> tuple[str, str, bytes | None] | None:
                for repo, files in hub.repos.items():
                    prefix = f"/{repo}/resolve/"
                    if self.path.startswith(prefix):
                        name = self.path[len(prefix):].split("?")[0].split("/", 1)[1]
                        return repo, name, files.get(name)
                return None

            def _missing(self, code: str, head: bool) -> None:
                """As the Hub answers: 404 with the error's name, which huggingface_hub turns into its own error."""
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send(self, body: bytes, headers: dict[str, str], head: bool = False) -> None:
                self.send_response(200)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _serve(self, head: bool) -> None:
                if self.path == "/":  # the front page: what the reachability check asks for
                    return self._send(b"<html>hub</html>", {"Content-Type": "text/html"}, head)
                if self.path.startswith("/api/models/"):
                    repo = self.path[len("/api/models/"):].split("?")[0].split("/revision/")[0]
                    if repo not in hub.repos:
                        return self._missing("RepoNotFound", head)
                    body = json.dumps({"id": repo, "sha": "1" * 40, "siblings": [
                        {"rfilename": name, "size": len(data)} for name, data in hub.repos[repo].items()]}).encode()
                    return self._send(body, {"Content-Type": "application/json"}, head)
                found = self._file()
                if found is None:
                    return self._missing("RepoNotFound", head)
                repo, name, data = found
                if data is None:
                    return self._missing("EntryNotFound", head)
                if not head:
                    hub.downloads.append(f"{repo}/{name}")
                etag = hashlib.sha1(data).hexdigest()
                self._send(data, {"ETag": f'"{etag}"', "X-Repo-Commit": "1" * 40}, head)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(head=True)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


