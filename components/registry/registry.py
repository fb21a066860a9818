"""The versioned model registry: TF Serving's layout on a local folder or gs://bucket/prefix.

Layout (what TF Serving's file-system source polls: numeric children of the model folder)::

    <registry>/<model_name>/<N>/saved_model.pb, variables/, assets/, deblur.json, ...
    <registry>/<model_name>/<N>/manifest.json       written by the registry, see below
    <registry>/<model_name>/.staging/...            local only: pushes being copied
    <registry>/<model_name>/.issued/<N>             local only: versions ever published
    <registry>/<model_name>/.claims/<N>             gs:// only: versions ever claimed

TF Serving parses child names as integers and ignores the dot-folders.

Guarantees
----------
1. A version is *complete* when `<N>/manifest.json` exists. `versions()`, `latest()`,
   `show()`, `local_path()` and `load_latest()` only ever see complete versions.
2. Two pushes, from any number of processes or machines, never get the same version.
3. A push that dies at any point leaves no complete version behind, and later pushes work.
4. Version numbers are never reused, even if a version folder is deleted by hand later.
5. The manifest lists every file of the version with its size and SHA-256; downloads
   (`local_path` of a gs:// registry) are verified against it.

How, on a local (POSIX) folder: claim by rename
    The push copies the model into a private staging folder `.staging/<pid>@<host>@<random>`
    inside the model folder (same file system), fsyncs every file, writes the manifest into
    it, and then claims and publishes in one step: `os.rename(staging, <model>/<N>)` with
    N = 1 + the highest number among the numeric folders and `.issued/` markers.
    rename(2) is atomic and refuses (ENOTEMPTY / EEXIST) to replace a non-empty folder, so of
    two pushes that pick the same N exactly one wins; the loser re-reads the folder, rewrites
    its manifest with the next N and tries again. There is no separate claim to leak:
    a numeric folder exists only once it is complete, so TF Serving never sees a half-copied
    version, and visible versions appear in increasing order (each new one is higher than every
    one visible before it). Why not claim first (O_EXCL marker or mkdir of `<N>`) and copy
    after: a mkdir'ed `<N>` is exactly the half-copied numeric folder TF Serving must never
    see, and a claim marker plus a later rename leaves a gap when the pusher dies in between
    and lets versions become visible out of order. After the rename an empty `.issued/<N>`
    marker is written so that N is not handed out again if `<N>` is ever deleted (guarantee 4).
    A push killed before the rename leaves only its staging folder; the next push on the same
    host removes staging folders whose process is gone (pid check); folders left by other
    hosts are kept (the pid cannot be checked from here) and are harmless. (Containers that
    share a host name but not a pid namespace could remove each other's live staging folder;
    the victim's rename then fails with an error, it never publishes a partial version.)

How, on gs:// (google-cloud-storage only; TensorFlow's gs:// file system ignores the
emulator and offers nothing atomic either): claim by create-only precondition, manifest last
    GCS has no rename and no atomic multi-object commit. The push first claims N by creating
    `.claims/<N>` with `if_generation_match=0` (the create fails with HTTP 412
    PreconditionFailed if the object exists, so exactly one claimant wins; the loser tries
    N+1), then uploads the files under `<N>/` (variables/, assets/ and extra files first,
    saved_model.pb after them) and the manifest LAST, also create-only. The manifest is the
    commit marker: consumers list only versions whose manifest exists. A dead push leaves its
    claim and perhaps some files under `<N>/` but no manifest: not a version for consumers,
    and its number is never reused (a gap in the numbering, never a duplicate).
    Limitation: TF Serving polling a gs:// registry directly lists `<N>/` as soon as its first
    object exists, before the manifest. Because saved_model.pb is uploaded after every file it
    references, a load attempt either finds no saved_model.pb (it fails; TF Serving retries
    per --max_num_load_retries and keeps serving the previous version) or finds the complete
    SavedModel; a push killed before saved_model.pb leaves a `<N>/` that TF Serving can never
    load (it logs errors and keeps the previous version until N+1 is pushed). A stricter
    design, not implemented: upload under `.staging/<claim>/` and server-side copy into `<N>/`
    (saved_model.pb, then manifest last); the numeric prefix then exists only during the
    seconds of the copy and a push killed during the upload leaves no numeric prefix at all.
    For a serving fleet that needs strict atomicity, point TF Serving at a local folder filled
    by `local_path()` (whose cache is filled atomically, by rename) instead of at gs://.
    On gs://, versions become visible in claim order, which is not always completion order.
    Retried uploads: google-cloud-storage retries a conditional upload after a lost response;
    the retry then fails the precondition against our own object. Each claim carries a random
    token and each upload is compared by size and MD5 after a 412, so our own earlier write
    counts as success and only someone else's object counts as a conflict.

The manifest (JSON) is the caller's dict plus the registry's fields `model_name`, `version`,
`created` (UTC ISO 8601), `registry` ({uri, model_name, version_uri}), `files`
({relative path: {bytes, sha256}}) and `dirs` (the model's sub-folders, so that empty ones
such as assets/ are recreated on download); the caller may not set those keys.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from core.artifacts import SAVED_MODEL_FILE, SAVED_MODEL_TEXT_FILE

DEFAULT_MODEL_NAME = "deblur-icdpm"
MANIFEST = "manifest.json"
STAGING = ".staging"
ISSUED = ".issued"
CLAIMS = ".claims"
SAVED_MODEL_FILES = (SAVED_MODEL_FILE, SAVED_MODEL_TEXT_FILE)
RESERVED_KEYS = ("model_name", "version", "created", "registry", "files", "dirs")
CACHE_ENV = "DEBLUR_REGISTRY_CACHE"

log = logging.getLogger(__name__)
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHUNK = 1 << 20

# progress(done_files, total_files, relative_path), called after each file is staged/uploaded
Progress = Callable[[int, int, str], None]


class RegistryError(ValueError):
    """A registry request that cannot be served (empty registry, unknown version, bad input).

    A ValueError, so the CLI prints it as a one-line error."""


def _version_name(name: str) -> Optional[int]:
    """The version of a child folder name, or None: canonical positive integers only."""
    if name.isdigit() and name[0] != "0":
        return int(name)
    return None


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def _split_gcs(uri: str) -> Tuple[str, str]:
    rest = uri[len("gs://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise RegistryError(f"{uri!r} names no bucket; expected gs://BUCKET[/PREFIX]")
    return bucket, prefix.strip("/")


class Storage:
    """Local paths and gs:// objects, the registry's storage layer: the Registry, its aliases
    (aliases.py) and the pusher (pusher.py, which reads the evaluator's and the ingest's files)
    reach gs:// through here, over one google-cloud-storage client built in one place
    (`client`) the first time a gs:// URI is touched.

    `client`: a google.cloud.storage.Client (default: one built from the environment; with
    STORAGE_EMULATOR_HOST set it talks to that emulator, anonymously). Why not TensorFlow's
    gs:// file system: it ignores the emulator and has no create-only write (module docstring)."""

    def __init__(self, client=None):
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from google.cloud import storage

            self._client = storage.Client()
        return self._client

    def bucket(self, name: str):
        return self.client.bucket(name)

    def read_text(self, uri: str) -> Optional[str]:
        """The text of a local file or a gs:// object, or None when it does not exist."""
        if _is_gcs(uri):
            bucket, name = _split_gcs(uri)
            blob = self.bucket(bucket).get_blob(name)
            return None if blob is None else blob.download_as_bytes().decode()
        if not os.path.isfile(uri):
            return None
        with open(uri) as f:
            return f.read()

    def _blobs(self, uri: str) -> Iterator[Tuple[str, Any]]:
        """(path relative to the gs:// folder uri, blob) of every object under it."""
        bucket, prefix = _split_gcs(uri.rstrip("/"))
        for blob in self.client.list_blobs(bucket, prefix=prefix + "/" if prefix else None):
            rel = blob.name[len(prefix) + 1:] if prefix else blob.name
            if rel and not rel.endswith("/"):
                yield rel, blob

    def list_sizes(self, uri: str) -> List[Tuple[str, int]]:
        """(relative path, bytes) of every file under a local or gs:// folder, sorted."""
        if _is_gcs(uri):
            return sorted((rel, blob.size) for rel, blob in self._blobs(uri))
        out = []
        for root, _, files in os.walk(uri):
            for f in files:
                p = os.path.join(root, f)
                out.append((os.path.relpath(p, uri).replace(os.sep, "/"), os.path.getsize(p)))
        return sorted(out)

    def download_tree(self, uri: str, dest: str) -> int:
        """Copies every object under the gs:// folder uri into the local folder dest (same
        relative paths); returns how many."""
        n = 0
        for rel, blob in self._blobs(uri):
            path = os.path.join(dest, *rel.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            blob.download_to_filename(path)
            n += 1
        return n


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: str) -> Tuple[int, str, str]:
    """(bytes, sha256 hex, md5 base64) of a local file."""
    sha, md5, n = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
            n += len(chunk)
    return n, sha.hexdigest(), base64.b64encode(md5.digest()).decode()


def _copy_hashed(src: str, dst: str) -> Tuple[int, str]:
    """Copies src to a new file dst (never overwrites), fsynced; returns (bytes, sha256)."""
    sha, n = hashlib.sha256(), 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        for chunk in iter(lambda: fi.read(_CHUNK), b""):
            sha.update(chunk)
            fo.write(chunk)
            n += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return n, sha.hexdigest()


def _write_new(path: str, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _model_files(model_dir: str) -> Tuple[List[str], List[str]]:
    """(files, folders) of a local SavedModel folder, relative POSIX paths, publish order.

    Files: everything except saved_model.pb(txt), sorted, then saved_model.pb(txt) last, so
    that on gs:// the graph appears after everything it references."""
    if not os.path.isdir(model_dir):
        raise RegistryError(f"model_dir {model_dir} is not a directory")
    if not any(os.path.isfile(os.path.join(model_dir, f)) for f in SAVED_MODEL_FILES):
        raise RegistryError(f"model_dir {model_dir} is not a SavedModel: it has no {SAVED_MODEL_FILE}")
    files, dirs = [], []
    for root, dnames, fnames in os.walk(model_dir):
        dnames.sort()
        rel_root = os.path.relpath(root, model_dir)
        for d in dnames:
            dirs.append(os.path.normpath(os.path.join(rel_root, d)).replace(os.sep, "/"))
        for f in sorted(fnames):
            files.append(os.path.normpath(os.path.join(rel_root, f)).replace(os.sep, "/"))
    if MANIFEST in files:
        raise RegistryError(f"model_dir {model_dir} holds a {MANIFEST}, a name the registry "
                            "reserves for its own manifest")
    graph = [f for f in files if f in SAVED_MODEL_FILES]
    return [f for f in files if f not in SAVED_MODEL_FILES] + graph, dirs


def _check_manifest(manifest: Dict[str, Any]) -> Dict[str, Any]:
    if not isinstance(manifest, dict):
        raise RegistryError(f"manifest must be a dict, got {type(manifest).__name__}")
    taken = sorted(k for k in RESERVED_KEYS if k in manifest)
    if taken:
        raise RegistryError(f"manifest keys {taken} are set by the registry, not the caller")
    try:
        json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise RegistryError(f"manifest is not plain JSON: {e}") from None
    return dict(manifest)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def manifest_problem(manifest: Any) -> Optional[str]:
    """None when a parsed manifest has the types every reader relies on, else what is wrong
    ("has no file list", "metrics.out.lpips is a str, not a number", ...).

    Valid JSON of the wrong shape (a hand edit, another tool's file) is a damaged version like
    bad JSON: listed as DAMAGED, skipped by latest, never an AttributeError halfway through a
    listing."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "has no file list"
    for rel, meta in manifest["files"].items():
        if not (isinstance(meta, dict) and isinstance(meta.get("bytes"), int)
                and not isinstance(meta.get("bytes"), bool) and isinstance(meta.get("sha256"), str)):
            return f"lists {rel!r} without an integer 'bytes' and a string 'sha256'"
    if not isinstance(manifest.get("dirs", []), list) or not all(
            isinstance(d, str) for d in manifest.get("dirs", [])):
        return "has a 'dirs' that is not a list of folder names"
    if "version" in manifest and not (isinstance(manifest["version"], int)
                                      and not isinstance(manifest["version"], bool)):
        return f"has a version of type {type(manifest['version']).__name__}"
    for key in ("sampling", "blessing", "serving_default"):  # what readers of versions read
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            return f"has a {key!r} of type {type(manifest[key]).__name__}, not an object"
    metrics = manifest.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            return f"has 'metrics' of type {type(metrics).__name__}, not an object"
        for domain, values in metrics.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                return f"has metrics.{domain} of type {type(values).__name__}, not an object"
            for name, value in values.items():
                if value is not None and not _number(value):
                    return f"has metrics.{domain}.{name} = {value!r}, not a number"
    return None


def is_blessed(manifest: Dict[str, Any]) -> bool:
    """The manifest records a blessing (the pusher registers blessed models only; a version
    pushed by hand without one is not a target for an alias)."""
    blessing = manifest.get("blessing")
    return isinstance(blessing, dict) and blessing.get("blessed") is True


def _check_files(root: str, manifest: Dict[str, Any], hashes: bool) -> Optional[str]:
    """None when every file the manifest lists is under root with its size (and, with hashes,
    its SHA-256), else what differs first."""
    for rel, meta in sorted(manifest["files"].items()):
        path = os.path.join(root, *rel.split("/"))
        if not os.path.isfile(path):
            return f"{rel} is missing"
        size = os.path.getsize(path)
        if size != meta.get("bytes"):
            return f"{rel} has {size} bytes, the manifest says {meta.get('bytes')}"
        if hashes:
            _, sha, _ = _hash_file(path)
            if sha != meta.get("sha256"):
                return (f"{rel} has sha256 {sha[:12]}..., the manifest says "
                        f"{str(meta.get('sha256'))[:12]}...")
    return None


def verify_folder(folder: str) -> Optional[str]:
    """For a local folder holding a registry version's manifest.json (a version folder given
    as a plain path, or a downloaded copy): None when every file it lists is there with its
    size and SHA-256, else what is wrong, naming the version. Folders without a manifest are
    not registry versions: None."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"{path} is not JSON ({e})"
    shape = manifest_problem(manifest)
    if shape:
        return f"{path} {shape}"
    problem = _check_files(folder, manifest, hashes=True)
    if problem is None:
        return None
    name = (f"version {manifest.get('version')} of {manifest.get('model_name')!r}"
            if manifest.get("version") is not None else "the registry version")
    return f"{folder} ({name}) is damaged: {problem}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def default_cache_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "deblur", "registry")


class Registry:
    """One model's versions in a registry at `uri` (a local folder or gs://bucket/prefix).

    `client` is a google.cloud.storage.Client for gs:// (default: one built from the
    environment, see Storage, which `storage` holds). `cache_dir` holds downloaded versions of
    a gs:// registry (default $DEBLUR_REGISTRY_CACHE or ~/.cache/deblur/registry)."""

    def __init__(self, uri: str, model_name: str = DEFAULT_MODEL_NAME, *, client=None,
                 cache_dir: Optional[str] = None):
        if not uri:
            raise RegistryError("registry uri is empty")
        if not _MODEL_NAME_RE.match(model_name or "") or _version_name(model_name) is not None:
            raise RegistryError(f"model name {model_name!r} must be letters, digits, '.', '_' or "
                                "'-', start with a letter or digit, and not be a number")
        self.uri = uri.rstrip("/") if _is_gcs(uri) else os.path.abspath(uri)
        self.model_name = model_name
        self.cache_dir = cache_dir
        self.storage = Storage(client)
        if _is_gcs(uri):
            self._bucket_name, prefix = _split_gcs(uri)
            self._root = f"{prefix}/{model_name}" if prefix else model_name
        else:
            self._root = os.path.join(os.path.abspath(uri), model_name)

    def __repr__(self) -> str:
        return f"Registry({self.uri!r}, {self.model_name!r})"

    @property
    def is_gcs(self) -> bool:
        return _is_gcs(self.uri)

    @property
    def model_uri(self) -> str:
        """The folder TF Serving's model_base_path points at."""
        return f"gs://{self._bucket_name}/{self._root}" if self.is_gcs else self._root

    def version_uri(self, version: int) -> str:
        return f"{self.model_uri}/{int(version)}"

    # ---------------------------------------------------------------------------- reading
    def versions(self) -> List[int]:
        """Complete versions (their manifest exists), ascending."""
        if self.is_gcs:
            return sorted(self._gcs_scan()[0])
        if not os.path.isdir(self._root):
            return []
        out = []
        for name in os.listdir(self._root):
            v = _version_name(name)
            if v is not None and os.path.isfile(os.path.join(self._root, name, MANIFEST)):
                out.append(v)
        return sorted(out)

    def incomplete(self) -> List[int]:
        """Numbered versions without a manifest, ascending: not registry versions.

        gs://: claimed versions without a manifest (pushes in progress or dead). Local: a
        numeric folder without manifest.json. The registry's own pushes never leave one (a
        numeric folder appears complete, by rename), so it was made or altered by hand: a
        copied SavedModel, a deleted manifest. TF Serving polling the folder with its default
        policy (the highest numeric child that loads) would serve it anyway; the exported
        models.config (export-tf-serving-config) names versions and prevents that."""
        if self.is_gcs:
            complete, numeric, claims = self._gcs_scan()
            return sorted((numeric | claims) - complete)
        if not os.path.isdir(self._root):
            return []
        return sorted(v for v in map(_version_name, os.listdir(self._root))
                      if v is not None and os.path.isdir(os.path.join(self._root, str(v)))
                      and not os.path.isfile(os.path.join(self._root, str(v), MANIFEST)))

    def incomplete_origin(self, version: int) -> Optional[Dict[str, Any]]:
        """What is known of the push that left an incomplete version: its claim on gs://
        (host, pid, time), the registry's issue record locally (the push that published it,
        before its manifest went), or None."""
        try:
            if self.is_gcs:
                blob = self._bucket().get_blob(f"{self._root}/{CLAIMS}/{int(version)}")
                text = None if blob is None else blob.download_as_bytes().decode()
            else:
                path = os.path.join(self._root, ISSUED, str(int(version)))
                text = open(path).read() if os.path.isfile(path) else None
            if text is None:
                return None
            record = json.loads(text) if text.strip() else {}
            return record if isinstance(record, dict) else None
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def incomplete_text(self, version: int) -> str:
        origin = self.incomplete_origin(version)
        if origin is None:
            how = "not pushed by the registry (no claim or issue record): copied in by hand?"
        elif origin.get("claimed"):
            how = (f"claimed by the push of {origin.get('host', '?')} pid {origin.get('pid', '?')} "
                   f"at {origin['claimed']}, which did not finish or is still running")
        else:
            by = (f" by {origin.get('host', '?')} pid {origin.get('pid', '?')} at "
                  f"{origin['published']}" if origin.get("published") else "")
            how = f"published{by}; its {MANIFEST} was removed since"
        return f"version {version} is INCOMPLETE (no {MANIFEST}; {how})"

    def show(self, version: int) -> Dict[str, Any]:
        """The manifest of a complete version; RegistryError if there is none, or if it is
        damaged (not JSON, or without its file list)."""
        version = self._require(version)
        where = f"{self.version_uri(version)}/{MANIFEST}"
        try:
            if self.is_gcs:
                manifest = json.loads(self._bucket().blob(f"{self._root}/{version}/{MANIFEST}")
                                      .download_as_bytes())
            else:
                with open(os.path.join(self._root, str(version), MANIFEST)) as f:
                    manifest = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise RegistryError(f"version {version} is damaged: {where} is not JSON ({e})") from None
        problem = manifest_problem(manifest)
        if problem:
            raise RegistryError(f"version {version} is damaged: {where} {problem}")
        return manifest

    def verify(self, version: int, hashes: bool = False) -> Optional[str]:
        """None if the version is whole, else what is wrong with it: its manifest unreadable,
        or (local registries) a file of the manifest missing or of another size, or, with
        hashes=True, of another SHA-256. A gs:// version's files are checked on download
        (local_path), so here only its manifest is read."""
        try:
            manifest = self.show(version)
        except RegistryError as e:
            return str(e)
        if self.is_gcs:
            return None
        problem = _check_files(os.path.join(self._root, str(int(version))), manifest, hashes)
        return f"version {version} is damaged: {problem}" if problem else None

    def latest(self, hashes: bool = False) -> Optional[Tuple[int, Dict[str, Any]]]:
        """(version, manifest) of the highest complete version that is whole (verify()), or
        None when there is none. Damaged versions are skipped with a warning naming them."""
        versions = self.versions()
        newest = versions[-1] if versions else 0
        for version in self.incomplete():
            if version > newest and not self.is_gcs:
                log.warning("registry %s: skipping %s; TF Serving polling %s with its default "
                            "version policy would serve it as the newest version",
                            self.model_uri, self.incomplete_text(version), self.model_uri)
        for version in reversed(versions):
            problem = self.verify(version, hashes=hashes)
            if problem is None:
                return version, self.show(version)
            log.warning("registry %s: skipping %s", self.model_uri, problem)
        return None

    def local_path(self, version: int) -> str:
        """A local folder holding the complete version (a SavedModel + manifest.json).

        Local registry: the version folder itself. gs://: a copy under the cache folder,
        downloaded (files listed in the manifest only, each checked against its size and
        SHA-256) into a private folder and renamed into place, so a cached version is either
        complete or absent. A cached copy is reused when its manifest is byte-identical to the
        registry's (versions never change); a different one is an error, never served."""
        version = self._require(version)
        if not self.is_gcs:
            problem = self.verify(version, hashes=True)  # what is loaded is what was pushed
            if problem:
                raise RegistryError(f"{self.model_uri}: {problem}")
            return os.path.join(self._root, str(version))
        cache = os.path.abspath(self.cache_dir or default_cache_dir())
        dest = os.path.join(cache, self._bucket_name, *self._root.split("/"), str(version))
        bucket = self._bucket()
        manifest_bytes = bucket.blob(f"{self._root}/{version}/{MANIFEST}").download_as_bytes()
        if self._cached(dest, manifest_bytes, version):
            return dest
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".download-{version}-", dir=parent)
        os.chmod(tmp, 0o755)
        try:
            manifest = json.loads(manifest_bytes)
            for rel, meta in sorted(manifest["files"].items()):
                path = os.path.join(tmp, *rel.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                bucket.blob(f"{self._root}/{version}/{rel}").download_to_filename(path)
                size, sha, _ = _hash_file(path)
                if (size, sha) != (meta["bytes"], meta["sha256"]):
                    raise RegistryError(
                        f"{self.version_uri(version)}/{rel} does not match its manifest "
                        f"({size} bytes, sha256 {sha[:12]} vs {meta['bytes']}, "
                        f"{meta['sha256'][:12]})")
            for rel in manifest.get("dirs", []):  # e.g. an empty assets/
                os.makedirs(os.path.join(tmp, *rel.split("/")), exist_ok=True)
            _write_new(os.path.join(tmp, MANIFEST), manifest_bytes)
            try:
                os.rename(tmp, dest)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # another process finished the same download first: use its copy
                self._cached(dest, manifest_bytes, version)
            else:
                tmp = None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _cached(self, dest: str, manifest_bytes: bytes, version: int) -> bool:
        """True if dest holds this very version; an error if it holds another one (the
        registry was recreated and numbers repeat): a stale copy is never served."""
        path = os.path.join(dest, MANIFEST)
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            if f.read() == manifest_bytes:
                return True
        raise RegistryError(f"the cached copy {dest} is not {self.version_uri(version)} as it is "
                            "now (the registry was recreated?); delete the cached copy")

    # ---------------------------------------------------------------------------- writing
    def push(self, model_dir: str, manifest: Dict[str, Any],
             progress: Optional[Progress] = None) -> int:
        """Publishes the SavedModel folder `model_dir` (local or gs://) as a new version.

        Returns the version number. The version becomes visible only when complete, no two
        pushes get the same number, and a push that dies leaves nothing visible (see the
        module docstring for how, locally and on gs://)."""
        user_manifest = _check_manifest(manifest)
        with self._source(model_dir) as src:
            files, dirs = _model_files(src)
            if self.is_gcs:
                return self._push_gcs(src, files, dirs, user_manifest, progress)
            return self._push_local(src, files, dirs, user_manifest, progress)

    # ------------------------------------------------------------------------ internals
    def _require(self, version) -> int:
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise RegistryError(f"version must be an integer, got {version!r}") from None
        versions = self.versions()
        if not versions:
            raise RegistryError(f"registry {self.uri} holds no complete version of model "
                                f"{self.model_name!r}")
        if version not in versions:
            raise RegistryError(f"model {self.model_name!r} in {self.uri} has no complete version "
                                f"{version} (versions: {version_ranges(versions)})")
        return version

    def _full_manifest(self, user: Dict[str, Any], version: int, files: Dict[str, Any],
                       dirs: List[str]) -> bytes:
        m = dict(user)
        m.update(model_name=self.model_name, version=version, created=_utc_now(),
                 registry={"uri": self.uri, "model_name": self.model_name,
                           "version_uri": self.version_uri(version)},
                 files=files, dirs=[d for d in dirs])
        return (json.dumps(m, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()

    @contextlib.contextmanager
    def _source(self, model_dir: str) -> Iterator[str]:
        """A local folder with the model: model_dir itself, or a download of a gs:// one."""
        if not _is_gcs(model_dir):
            yield model_dir
            return
        tmp = tempfile.mkdtemp(prefix="deblur-registry-src-")
        try:
            if not self.storage.download_tree(model_dir, tmp):
                raise RegistryError(f"model_dir {model_dir} holds no objects")
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # local ---------------------------------------------------------------------------
    def _push_local(self, src: str, files: List[str], dirs: List[str],
                    user: Dict[str, Any], progress: Optional[Progress]) -> int:
        staging_root = os.path.join(self._root, STAGING)
        issued_root = os.path.join(self._root, ISSUED)
        os.makedirs(staging_root, exist_ok=True)
        os.makedirs(issued_root, exist_ok=True)
        self._clean_dead_staging(staging_root)
        stage = tempfile.mkdtemp(prefix=f"{os.getpid()}@{socket.gethostname()}@",
                                 dir=staging_root)
        os.chmod(stage, 0o755)  # mkdtemp makes it 0700; the version must be readable by servers
        try:
            for d in dirs:
                os.makedirs(os.path.join(stage, *d.split("/")), exist_ok=True)
            meta = {}
            for i, rel in enumerate(files, 1):
                size, sha = _copy_hashed(os.path.join(src, *rel.split("/")),
                                         os.path.join(stage, *rel.split("/")))
                meta[rel] = {"bytes": size, "sha256": sha}
                if progress:
                    progress(i, len(files), rel)
            for d in [""] + dirs:
                _fsync_dir(os.path.join(stage, *d.split("/")) if d else stage)
            manifest_path = os.path.join(stage, MANIFEST)
            while True:
                version = self._next_local_version(issued_root)
                if os.path.exists(manifest_path):
                    os.remove(manifest_path)
                _write_new(manifest_path, self._full_manifest(user, version, meta, dirs))
                _fsync_dir(stage)
                try:
                    os.rename(stage, os.path.join(self._root, str(version)))
                except OSError as e:
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        continue  # another push published `version` first: take the next
                    raise
                stage = None
                break
            _fsync_dir(self._root)
            with open(os.path.join(issued_root, str(version)), "a") as f:
                f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                    "published": _utc_now()}, sort_keys=True))
            return version
        finally:
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)

    def _next_local_version(self, issued_root: str) -> int:
        seen = [0]
        for folder in (self._root, issued_root):
            seen += [v for v in map(_version_name, os.listdir(folder)) if v is not None]
        return max(seen) + 1

    @staticmethod
    def _clean_dead_staging(staging_root: str) -> None:
        host = socket.gethostname()
        for name in os.listdir(staging_root):
            pid, _, rest = name.partition("@")
            owner_host = rest.rpartition("@")[0]
            if pid.isdigit() and owner_host == host and not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(staging_root, name), ignore_errors=True)

    # gs:// ---------------------------------------------------------------------------
    def _bucket(self):
        return self.storage.bucket(self._bucket_name)

    def _gcs_scan(self):
        """(complete, numeric prefixes, claims) as sets of version numbers."""
        from google.api_core import exceptions as gexc

        complete, numeric, claims = set(), set(), set()
        try:
            blobs = list(self.storage.client.list_blobs(self._bucket_name,
                                                        prefix=self._root + "/"))
        except gexc.NotFound:
            raise RegistryError(f"bucket gs://{self._bucket_name} does not exist") from None
        for blob in blobs:
            parts = blob.name[len(self._root) + 1:].split("/")
            if parts[0] == CLAIMS and len(parts) == 2 and _version_name(parts[1]):
                claims.add(int(parts[1]))
            elif _version_name(parts[0]) is not None:
                numeric.add(int(parts[0]))
                if parts[1:] == [MANIFEST]:
                    complete.add(int(parts[0]))
        return complete, numeric, claims

    def _create_only(self, name: str, *, data: Optional[bytes] = None,
                     filename: Optional[str] = None, md5: Optional[str] = None) -> bool:
        """Creates object `name`; False if it already exists and is not ours.

        After a 412 the existing object is compared with what we meant to write (bytes for
        `data`, MD5 for a file): equal means a retried request of ours had already landed."""
        from google.api_core import exceptions as gexc

        blob = self._bucket().blob(name)
        try:
            if filename is not None:
                blob.upload_from_filename(filename, if_generation_match=0)
            else:
                blob.upload_from_string(data, content_type="application/json",
                                        if_generation_match=0)
            return True
        except gexc.PreconditionFailed:
            existing = self._bucket().get_blob(name)
            if existing is None:
                return False
            if filename is not None:
                return existing.md5_hash == md5
            return existing.download_as_bytes() == data

    def _push_gcs(self, src: str, files: List[str], dirs: List[str],
                  user: Dict[str, Any], progress: Optional[Progress]) -> int:
        hashed = {rel: _hash_file(os.path.join(src, *rel.split("/"))) for rel in files}
        token = secrets.token_hex(16)
        claim = json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid(),
                            "claimed": _utc_now(), "source": src}, sort_keys=True).encode()
        _, numeric, claims = self._gcs_scan()
        version = max(numeric | claims | {0}) + 1
        while not self._create_only(f"{self._root}/{CLAIMS}/{version}", data=claim):
            _, numeric, claims = self._gcs_scan()
            version = max(numeric | claims | {version}) + 1
        prefix = f"{self._root}/{version}"
        for i, rel in enumerate(files, 1):
            _, _, md5 = hashed[rel]
            if not self._create_only(f"{prefix}/{rel}", filename=os.path.join(src, *rel.split("/")),
                                     md5=md5):
                raise RuntimeError(f"{self.version_uri(version)}/{rel} exists and is not ours, "
                                   f"although this push holds the claim on version {version}; "
                                   "something writes into the registry outside the registry API")
            if progress:
                progress(i, len(files), rel)
        meta = {rel: {"bytes": n, "sha256": sha} for rel, (n, sha, _) in hashed.items()}
        manifest = self._full_manifest(user, version, meta, dirs)
        if not self._create_only(f"{prefix}/{MANIFEST}", data=manifest):
            raise RuntimeError(f"{self.version_uri(version)}/{MANIFEST} exists and is not ours")
        return version


def version_ranges(versions: List[int]) -> str:
    """'1-3, 5' for [1, 2, 3, 5]."""
    out, start = [], None
    for i, v in enumerate(versions):
        if start is None:
            start = v
        if i + 1 == len(versions) or versions[i + 1] != v + 1:
            out.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(out)


def load_latest(uri: str, model_name: str = DEFAULT_MODEL_NAME, *, cache_dir: Optional[str] = None,
                client=None):
    """(tf.saved_model.load of the newest complete version, its manifest), for consumers.

    A gs:// registry is downloaded into the cache first (see Registry.local_path).
    RegistryError when the registry holds no complete version."""
    reg = Registry(uri, model_name, client=client, cache_dir=cache_dir)
    for version in reversed(reg.versions()):  # the newest whole version; damaged ones warned
        problem = reg.verify(version)
        if problem is None:
            try:
                path = reg.local_path(version)  # hashes checked (local) or on download (gs://)
            except RegistryError as e:
                problem = str(e)
        if problem:
            log.warning("registry %s: skipping %s", reg.model_uri, problem)
            continue
        import tensorflow as tf

        return tf.saved_model.load(path), reg.show(version)
    raise RegistryError(f"registry {uri} holds no complete version of model {model_name!r}"
                        if not reg.versions() else
                        f"registry {uri}: every version of model {model_name!r} is damaged")
