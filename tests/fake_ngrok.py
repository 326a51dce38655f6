"""A stand-in for the ngrok agent, for pyngrok to start: it serves pyngrok's agent API, and for each tunnel a real
proxy on loopback that asks for the tunnel's basic auth, as ngrok's edge does. It records how it was started (its
command line, its config file's modes and the token it read there) and what the tunnel asked for, and it logs an
error line quoting the authtoken, as the real agent does on ERR_NGROK_105."""

from __future__ import annotations

import sys
from pathlib import Path

AGENT = r'''#!{python}
import base64, http.server, json, os, re, sys, threading, urllib.error, urllib.request

record = {{"argv": sys.argv, "pid": os.getpid()}}
config = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv else None
token = re.search(r"authtoken: (\S+)", open(config).read()).group(1) if config else "none"
record["config_mode"] = oct(os.stat(config).st_mode & 0o777) if config else None
record["folder_mode"] = oct(os.stat(os.path.dirname(config)).st_mode & 0o777) if config else None
record["token_read"] = token


def proxy(upstream, users):
    allowed = ["Basic " + base64.b64encode(user.encode()).decode() for user in users]

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if allowed and self.headers.get("Authorization", "") not in allowed:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="ngrok"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            try:
                with urllib.request.urlopen(upstream + self.path, timeout=30) as answer:
                    status, body = answer.status, answer.read()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return "http://127.0.0.1:%d" % server.server_address[1]


class Api(http.server.BaseHTTPRequestHandler):
    def _reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._reply({{"tunnels": []}})

    def do_POST(self):
        options = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        upstream = options["upstream"]["url"]
        upstream = upstream if "://" in upstream else "http://127.0.0.1:" + upstream.rsplit(":", 1)[-1]
        record.update(options=options, public_url=proxy(upstream, options.get("basic_auth") or []))
        with open({out!r}, "w") as out:
            json.dump(record, out)
        self._reply({{"name": options.get("name", "t"), "public_url": record["public_url"], "proto": "http",
                     "config": {{"addr": upstream}}, "uri": "/api/tunnels/t"}})

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f'lvl=warn msg="authentication failed: Your authtoken: {{token}}"', flush=True)
print(f'lvl=info msg="starting web service" obj=web addr=127.0.0.1:{{server.server_address[1]}}', flush=True)
print('lvl=info msg="tunnel session started" obj=tunnels.session', flush=True)
print('lvl=info msg="client session established" obj=csess', flush=True)
threading.Event().wait()
'''


def fake_agent(folder: Path) -> tuple[Path, Path]:
    """The agent's executable in `folder` (for PYNGROK_NGROK_PATH), and the file where it writes its record."""
    agent, record = folder / "ngrok", folder / "agent.json"
    agent.write_text(AGENT.format(python=sys.executable, out=str(record)))
    agent.chmod(0o755)
    return agent, record
