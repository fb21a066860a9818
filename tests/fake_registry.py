"""A loopback fake of an OCI / Docker Registry HTTP API v2, for pipelines/kubeflow/images.py.

    reg = fake_registry.start(token=True, credential="secret")
    reg.push("deblur/pipeline", "0.1.0")        # -> "sha256:<hex>" of the manifest it serves
    reg.image("deblur/pipeline", "0.1.0")       # "127.0.0.1:<port>/deblur/pipeline:0.1.0"
    fake_registry.stop(reg)

It answers HEAD and GET /v2/<repository>/manifests/<tag or digest> as a registry does: the body
an OCI image manifest, the Docker-Content-Digest header the sha256 of that body (what a real
registry computes), Content-Type the manifest's media type; an unknown repository or tag is 404
with the distribution error JSON (MANIFEST_UNKNOWN); a request whose Accept names no manifest
type it serves is answered anyway (as registries do, with the stored type).

`token=True`: the manifests need a Bearer token, as Docker Hub, Artifact Registry and
distribution's token auth do: without one, 401 with `WWW-Authenticate: Bearer
realm="http://127.0.0.1:<port>/token",service="fake-registry",scope="repository:<repo>:pull"`;
GET /token?service=...&scope=... issues one. `credential`: the token endpoint then wants Basic
`oauth2accesstoken:<credential>` (what Artifact Registry's realm takes with an access token),
and the credential itself is also accepted directly as a Bearer on /v2/ (as Artifact Registry
accepts `gcloud auth print-access-token`). `requests` records (method, path, Authorization).

Not modelled: blobs, pushes over the API, token expiry, scopes beyond pull, TLS.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import secrets
import threading
import urllib.parse
from typing import Dict, List, Optional, Tuple

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class FakeRegistry(http.server.ThreadingHTTPServer):
    def __init__(self, token: bool = False, credential: Optional[str] = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token_required = token
        self.credential = credential
        self.issued: List[str] = []
        self.manifests: Dict[Tuple[str, str], bytes] = {}  # (repo, tag or digest) -> body
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self.lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def image(self, repo: str, tag: str) -> str:
        return f"{self.host}/{repo}:{tag}"

    def push(self, repo: str, tag: str, content: str = "") -> str:
        """Serves a new manifest under repo:tag (moving the tag); returns its digest."""
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + hashlib.sha256(
                           f"{repo}:{tag}:{content}".encode()).hexdigest(), "size": 2},
            "layers": []}, indent=3).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        with self.lock:
            self.manifests[(repo, tag)] = body
            self.manifests[(repo, digest)] = body
        return digest

    def manifest_requests(self) -> List[Tuple[str, str, Optional[str]]]:
        return [r for r in self.requests if "/manifests/" in r[1]]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
              head: bool = False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, code: int, err: str, message: str, head: bool,
               headers: Optional[Dict[str, str]] = None):
        body = json.dumps({"errors": [{"code": err, "message": message}]}).encode()
        self._send(code, body, {"Content-Type": "application/json", **(headers or {})}, head)

    def _authorized(self, srv: FakeRegistry) -> bool:
        if not srv.token_required:
            return True
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return False
        given = auth[7:]
        return given in srv.issued or (srv.credential is not None and given == srv.credential)

    def _handle(self, head: bool):
        srv: FakeRegistry = self.server  # type: ignore[assignment]
        url = urllib.parse.urlsplit(self.path)
        srv.requests.append((self.command, url.path, self.headers.get("Authorization")))
        if url.path == "/token":
            return self._token(srv, head)
        if url.path == "/v2/":
            return self._send(200, b"{}", {"Content-Type": "application/json"}, head)
        if not url.path.startswith("/v2/") or "/manifests/" not in url.path:
            return self._error(404, "NAME_UNKNOWN", "no such endpoint", head)
        repo, ref = url.path[4:].rsplit("/manifests/", 1)
        if not self._authorized(srv):
            realm = f"http://{srv.host}/token"
            return self._error(401, "UNAUTHORIZED", "authentication required", head, {
                "WWW-Authenticate": f'Bearer realm="{realm}",service="fake-registry",'
                                    f'scope="repository:{repo}:pull"'})
        with srv.lock:
            body = srv.manifests.get((repo, ref))
        if body is None:
            return self._error(404, "MANIFEST_UNKNOWN",
                               f"manifest unknown: {repo}:{ref}", head)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()  # as a registry computes it
        self._send(200, body, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest},
                   head)

    def _token(self, srv: FakeRegistry, head: bool):
        if srv.credential is not None:
            want = "Basic " + base64.b64encode(
                f"oauth2accesstoken:{srv.credential}".encode()).decode()
            if self.headers.get("Authorization") != want:
                return self._error(401, "UNAUTHORIZED", "invalid credentials", head)
        token = secrets.token_hex(16)
        srv.issued.append(token)
        self._send(200, json.dumps({"token": token, "expires_in": 300}).encode(),
                   {"Content-Type": "application/json"}, head)

    def do_GET(self):
        self._handle(head=False)

    def do_HEAD(self):
        self._handle(head=True)


def start(token: bool = False, credential: Optional[str] = None) -> FakeRegistry:
    srv = FakeRegistry(token=token, credential=credential)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def stop(srv: FakeRegistry) -> None:
    srv.shutdown()
    srv.server_close()
