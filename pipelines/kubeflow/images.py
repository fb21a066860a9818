"""Container images by digest: what a pipeline version runs is fixed when it is uploaded.

    resolve_digest("us-central1-docker.pkg.dev/p/deblur/deblur-pipeline:0.1.0")
        -> "us-central1-docker.pkg.dev/p/deblur/deblur-pipeline@sha256:<64 hex>"
    pin_images(pipeline_spec)  # every image of the spec, tag -> digest, in place
    tag_images(pipeline_spec)  # the images still named by a tag ([] once pinned)

A tag moves: a version that names `deblur-pipeline:0.1.0` runs whatever was pushed under that
tag last, so two runs of one version can run two builds, and a run cannot say which code it
ran. `deblur pipeline upload` / `deblur submit` therefore send a package whose images are named
by digest (compiler._package_for pins them); `deblur compile` writes the config's names.

Resolution is the OCI distribution API (the Docker Registry HTTP API v2), stdlib only:
HEAD https://<registry>/v2/<repository>/manifests/<tag> with the manifest media types accepted
(OCI index and manifest, Docker manifest list and v2 manifest: a multi-platform image is named by
its index, as `docker push` reports it); the digest is the Docker-Content-Digest header (a GET
of the manifest, hashed, when a registry leaves the header out of a HEAD). A 401 with a
`WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge is answered with a token
from the realm (the distribution token protocol), then the request is sent again.

Credentials: DEBLUR_REGISTRY_TOKEN, an access token, e.g. `gcloud auth print-access-token`.
Artifact Registry (*-docker.pkg.dev) and gcr.io accept such an OAuth2 access token directly as
`Authorization: Bearer <token>` on the /v2/ API (Artifact Registry's "Docker Registry API"
reference lists tags with exactly `curl -H "Authorization: Bearer $(gcloud auth
print-access-token)"`), and at their token realm as Basic `oauth2accesstoken:<token>` (what
`docker login -u oauth2accesstoken` sends): the token is sent as Bearer first, and to the realm
as that Basic credential when the registry challenges. Without the variable: anonymous (a public
image, or a registry on this machine). Docker's credential helpers are not run.

Registry names follow docker: the first path component is a registry when it holds '.' or ':'
or is `localhost`, else the image is on Docker Hub (registry-1.docker.io, `library/` before a
single name). Plain http only for localhost / 127.0.0.1 (docker treats them as insecure
registries); https everywhere else. Every failure is one ImageError line naming the image, what
the registry answered and what to do.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

TOKEN_ENV = "DEBLUR_REGISTRY_TOKEN"
TIMEOUT = 10.0
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
DOCKER_HUB = "registry-1.docker.io"
_INSECURE = ("localhost", "127.0.0.1")
_WHAT_TO_DO = "push the image first, or set kubeflow.image to repo@sha256:..."


class ImageError(ValueError):
    """An image that cannot be named by digest (one line for the CLI)."""


def parse(image: str) -> Tuple[str, str, Optional[str], Optional[str]]:
    """(registry host, repository, tag or None, digest or None) of an image reference."""
    name, digest = (image.split("@", 1) + [None])[:2] if "@" in image else (image, None)
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name if "/" in name else f"library/{name}"
    if registry in ("docker.io", "index.docker.io"):
        registry = DOCKER_HUB
    if not repository or not re.match(r"^[a-z0-9]+([._/-]+[a-z0-9]+)*$", repository):
        raise ImageError(f"image {image}: {repository!r} is not a repository name")
    if tag is not None and not re.match(r"^[\w][\w.-]{0,127}$", tag):
        raise ImageError(f"image {image}: {tag!r} is not a tag")
    return registry, repository, tag, digest


def is_digest(image: str) -> bool:
    return "@" in image and bool(DIGEST_RE.match(image.split("@", 1)[1]))


def _scheme(registry: str) -> str:
    return "http" if registry.split(":")[0] in _INSECURE else "https"


def _challenge(header: Optional[str]) -> Optional[Dict[str, str]]:
    """The parameters of a `Bearer realm="...",service="...",scope="..."` challenge."""
    if not header or not header.strip().lower().startswith("bearer "):
        return None
    return dict(re.findall(r'(\w+)="([^"]*)"', header.strip()[7:]))


def _open(req: urllib.request.Request):
    return urllib.request.urlopen(req, timeout=TIMEOUT)  # noqa: S310 - http(s) URLs built here


def _answer(e: urllib.error.HTTPError) -> str:
    """`401 Unauthorized: <the registry's first error message>`."""
    text = ""
    try:
        body = e.read().decode("utf-8", "replace")
        errors = json.loads(body).get("errors") or []
        text = errors[0].get("message") or errors[0].get("code") or "" if errors else ""
    except Exception:  # noqa: BLE001 - no JSON body (a HEAD has none)
        pass
    return f"{e.code} {e.reason}" + (f": {str(text).splitlines()[0][:200]}" if text else "")


def _token(image: str, challenge: Dict[str, str], credential: Optional[str]) -> str:
    realm = challenge.get("realm")
    if not realm:
        raise ImageError(f"image {image}: the registry asked for a token without a realm; "
                         f"{_WHAT_TO_DO}")
    query = {k: challenge[k] for k in ("service", "scope") if challenge.get(k)}
    url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
    req = urllib.request.Request(url)
    if credential:
        basic = base64.b64encode(f"oauth2accesstoken:{credential}".encode()).decode()
        req.add_header("Authorization", f"Basic {basic}")
    try:
        with _open(req) as r:
            body = json.loads(r.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise ImageError(f"image {image}: the registry's token service {realm} answered "
                         f"{_answer(e)}; set {TOKEN_ENV} (e.g. $(gcloud auth "
                         f"print-access-token)) or {_WHAT_TO_DO}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ImageError(f"image {image}: no token from {realm}: "
                         f"{getattr(e, 'reason', e)}; {_WHAT_TO_DO}") from None
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not token:
        raise ImageError(f"image {image}: the token service {realm} answered no token; "
                         f"{_WHAT_TO_DO}")
    return token


def resolve_digest(image: str, credential: Optional[str] = None) -> str:
    """`repo@sha256:<hex>` for `image`: as is when it names a digest already, else its tag's
    manifest digest as the registry reports it now. `credential`: an access token (default
    $DEBLUR_REGISTRY_TOKEN)."""
    image = (image or "").strip()
    if "@" in image:
        if not is_digest(image):
            raise ImageError(f"image {image}: a digest is sha256: and 64 lowercase hex digits; "
                             f"copy it from the registry (repo@sha256:...)")
        parse(image)
        return image
    registry, repository, tag, _ = parse(image)
    if tag is None:
        raise ImageError(f"image {image} names neither a tag nor a digest (latest is not "
                         f"assumed); name the tag you pushed, or set kubeflow.image to "
                         f"repo@sha256:...")
    credential = credential if credential is not None else os.environ.get(TOKEN_ENV) or None
    url = f"{_scheme(registry)}://{registry}/v2/{repository}/manifests/{tag}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    asked_token = False
    for method in ("HEAD", "GET"):
        while True:
            req = urllib.request.Request(url, method=method, headers=headers)
            try:
                with _open(req) as r:
                    digest = r.headers.get("Docker-Content-Digest")
                    body = r.read() if method == "GET" else b""
                break
            except urllib.error.HTTPError as e:
                challenge = _challenge(e.headers.get("WWW-Authenticate"))
                if e.code == 401 and challenge is not None and not asked_token:
                    asked_token = True
                    headers["Authorization"] = f"Bearer {_token(image, challenge, credential)}"
                    continue
                hint = (f"set {TOKEN_ENV} (e.g. $(gcloud auth print-access-token)), or "
                        if e.code in (401, 403) else "no manifest under that tag: "
                        if e.code == 404 else "")
                raise ImageError(f"image {image}: {url} answered {_answer(e)}; "
                                 f"{hint}{_WHAT_TO_DO}") from None
            except (urllib.error.URLError, OSError) as e:
                raise ImageError(f"image {image}: cannot reach the registry at "
                                 f"{_scheme(registry)}://{registry}: {getattr(e, 'reason', e)}; "
                                 f"{_WHAT_TO_DO}") from None
        if method == "GET" and not digest:
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if digest:
            break
    if not DIGEST_RE.match(digest or ""):
        raise ImageError(f"image {image}: the registry answered digest {digest!r}, not "
                         f"sha256:<64 hex>; {_WHAT_TO_DO}")
    name = image.rsplit(":", 1)[0]
    return f"{name}@{digest}"


# ---- the images of a compiled spec ----------------------------------------------------------
# where the compiled spec names an image: executors' container.image; the Beam argument
# --sdk_container_image= (executor args, beam_pipeline_args); the Vertex CustomJob's
# container_spec.image_uri (the Trainer's custom_config, a JSON constant); and the compiled
# config the DeblurRunCheck task carries (kubeflow.image, component_images, vertex.image,
# dataflow.sdk_container_image), also a JSON constant
_IMAGE_KEYS = ("image", "image_uri", "sdk_container_image")
_SDK_ARG = "--sdk_container_image="


def _walk(obj: Any, found: List[str], key: Optional[str] = None) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "component_images" and isinstance(v, dict):
                found.extend(x for x in v.values() if isinstance(x, str) and x)
            else:
                _walk(v, found, k)
    elif isinstance(obj, list):
        for v in obj:
            _walk(v, found, key)
    elif isinstance(obj, str):
        if key in _IMAGE_KEYS and obj:
            found.append(obj)
        elif obj.startswith(_SDK_ARG):
            found.append(obj[len(_SDK_ARG):])
        elif obj[:1] in ("{", "[") and ("image" in obj):
            try:
                inner = json.loads(obj)
            except ValueError:
                return
            _walk(inner, found, key)


def images(spec: Dict[str, Any]) -> List[str]:
    """Every distinct image the spec names, in order of appearance."""
    found: List[str] = []
    _walk(spec, found)
    return list(dict.fromkeys(found))


def tag_images(spec: Dict[str, Any]) -> List[str]:
    """The images of the spec not named by digest."""
    return [i for i in images(spec) if not is_digest(i)]


def _replace(obj: Any, pattern: "re.Pattern[str]", table: Dict[str, str]) -> Any:
    if isinstance(obj, dict):
        return {k: _replace(v, pattern, table) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace(v, pattern, table) for v in obj]
    if isinstance(obj, str):
        return pattern.sub(lambda m: table[m.group(0)], obj)
    return obj


def pin_images(spec: Dict[str, Any], resolve=resolve_digest) -> Dict[str, str]:
    """Rewrites, in place, every tag-named image of a pipeline spec (or a PipelineJob holding
    one) to its digest, resolving each distinct image once; returns {tag image: digest image}.
    Afterwards no image of the spec is named by a tag (else ImageError: a place this module
    does not know names an image)."""
    table = {i: resolve(i) for i in tag_images(spec)}
    if table:
        # whole names only: ...:0.1.0 must not match inside ...:0.1.0-tpu
        pattern = re.compile(r"(?<![\w./:@-])(" + "|".join(
            re.escape(i) for i in sorted(table, key=len, reverse=True)) + r")(?![\w.:@/-])")
        pinned = _replace(spec, pattern, table)
        spec.clear()
        spec.update(pinned)
    left = tag_images(spec)
    if left:
        raise ImageError(f"images still named by a tag after pinning: {', '.join(left)}")
    return table


def config_digest(spec: Dict[str, Any]) -> Optional[str]:
    """SHA-256 of the compiled config the spec's DeblurRunCheck task carries, exactly as the
    run's check task reads it (in a pinned spec, with the images by digest: the same config
    with another build behind a tag hashes differently), or None for a spec without that
    task."""
    dags = [spec.get("root", {})] + list(spec.get("components", {}).values())  # tfx-dag too
    task = next((d["dag"]["tasks"]["DeblurRunCheck"] for d in dags
                 if "DeblurRunCheck" in d.get("dag", {}).get("tasks", {})), {})
    constant = task.get("inputs", {}).get("parameters", {}).get("config", {}).get(
        "runtimeValue", {}).get("constant")
    if not isinstance(constant, str):
        return None
    return hashlib.sha256(constant.encode("utf-8")).hexdigest()


def describe(spec: Dict[str, Any]) -> str:
    """What a version description records of a pinned spec: its images and its config's hash."""
    parts = [f"images {', '.join(images(spec)) or 'none'}"]
    cfg = config_digest(spec)
    if cfg:
        parts.append(f"config sha256:{cfg}")
    return "; ".join(parts)
