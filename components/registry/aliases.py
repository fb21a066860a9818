"""Aliases of a registry model (`production`, `staging`, ...), their history, and model refs.

An alias is a word that names one version of a model, moved only on purpose: by a person
(`deblur registry alias set / promote / rollback`) or by the pipeline after a servability
check (`registry.promote_to`). It is what Vertex AI's `champion`, MLflow's
`models:/name@champion` and TF Serving's `version_labels` are.

Storage: an append-only log of moves per alias, one record per move::

    <registry>/<model>/.aliases/<alias>/<rev>.json     rev = 00000001, 00000002, ...

    {"alias", "rev", "version" (the target), "from" (the previous target or null), "action"
     (set | promote | rollback), "reason", "user", "host", "pid", "time" (UTC ISO 8601),
     "run" (the pipeline run that moved it, or null), "model_name"}

The alias's target is the version of its highest record. A move is one create-only write of
record rev+1, where rev is the highest record the mover read before checking its target:
  local folder  the record is written to a private temporary file, fsynced, and published by
                link(2) under its final name: atomic (a reader sees the whole record or none)
                and create-only (EEXIST when the name is taken; rename(2) would replace it)
  gs://         the record is uploaded with if_generation_match=0 (HTTP 412 when it exists)
Of two people moving an alias at once, both read rev N and both write rev N+1: exactly one
write succeeds, the other gets an AliasConflict naming the version that won, and nothing of
its move is written. Records are never rewritten or deleted, so the history is every record of
every alias, and no entry is lost under concurrent writers. TF Serving ignores the dot-folder.

A target must be a complete version whose files match its manifest (sizes and SHA-256; a
gs:// version is downloaded into the cache and checked) and whose manifest records a
blessing. `latest` is not an alias: it is the newest intact blessed version, as it always was.

Model refs, wherever a model is named (`deblur predict --model`, `registry show`, `serve`, the
pipeline's warm start)::

    NAME@ALIAS   @ALIAS (the configured model)   NAME@latest   NAME/N   NAME (= NAME@latest)
    and any of them after a registry URI: runs/local/registry/deblur-icdpm@production

Only the standard library and google-cloud-storage (for gs://, lazily) are imported here, so
the serving environment, which has neither TFX nor the trainer, uses it as is.
"""
from __future__ import annotations

import dataclasses
import errno
import getpass
import json
import logging
import os
import re
import secrets
import socket
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

from components.registry.registry import (DEFAULT_MODEL_NAME, Registry, RegistryError, _fsync_dir,
                                          is_blessed, version_ranges)

ALIASES = ".aliases"
LATEST = "latest"
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_REV_RE = re.compile(r"^(\d{8})\.json$")
ACTIONS = ("set", "promote", "rollback")
ANY = object()  # move(expect=ANY): whatever the alias names now

log = logging.getLogger(__name__)


class AliasConflict(RegistryError):
    """Someone else moved the alias between our read and our write; nothing was written."""


def check_alias(alias: str) -> str:
    """The alias if it is a word (lower-case letter first, then letters, digits, '-', '_'; at
    most 40), else a one-line RegistryError. 'latest' is taken: it means the newest version."""
    if not isinstance(alias, str) or not ALIAS_RE.match(alias):
        raise RegistryError(f"alias {alias!r} must be a word: a lower-case letter, then "
                            "lower-case letters, digits, '-' or '_' (at most 40), e.g. production")
    if alias == LATEST:
        raise RegistryError("'latest' is not an alias one can move: it always names the newest "
                            "intact version")
    return alias


def _now() -> str:
    """UTC, to the microsecond: the history is ordered by it, and moves come seconds apart."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or f"uid-{os.getuid()}"


@dataclasses.dataclass(frozen=True)
class Move:
    """One record of an alias's history."""
    alias: str
    rev: int
    version: int
    from_version: Optional[int]
    action: str
    reason: Optional[str]
    user: Optional[str]
    host: Optional[str]
    time: Optional[str]
    run: Optional[Dict[str, Any]] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Move":
        return cls(alias=d["alias"], rev=int(d["rev"]), version=int(d["version"]),
                   from_version=None if d.get("from") is None else int(d["from"]),
                   action=str(d.get("action", "set")), reason=d.get("reason"),
                   user=d.get("user"), host=d.get("host"), time=d.get("time"),
                   run=d.get("run") if isinstance(d.get("run"), dict) else None)

    def to_json(self) -> Dict[str, Any]:
        return {"alias": self.alias, "rev": self.rev, "version": self.version,
                "from": self.from_version, "action": self.action, "reason": self.reason,
                "user": self.user, "host": self.host, "time": self.time, "run": self.run}


class Aliases:
    """The aliases of one registry model (a Registry: local folder or gs://)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        r = registry
        self._root = (f"{r._root}/{ALIASES}" if r.is_gcs else os.path.join(r._root, ALIASES))

    # ------------------------------------------------------------------------- reading
    def _records(self, alias: Optional[str] = None) -> List[Move]:
        """Every record (of one alias, or of all), in (alias, rev) order. An unreadable record
        is an error naming it: a history with a hole is not silently shortened."""
        out = []
        for name, rev, text in self._raw(alias):
            try:
                move = Move.from_json(json.loads(text))
            except (ValueError, KeyError, TypeError) as e:
                raise RegistryError(f"alias record {self._where(name, rev)} is damaged "
                                    f"({type(e).__name__}: {e})") from None
            if move.alias != name or move.rev != rev:
                raise RegistryError(f"alias record {self._where(name, rev)} says alias "
                                    f"{move.alias!r} rev {move.rev}: it was edited or moved")
            out.append(move)
        return out

    def _where(self, alias: str, rev: int) -> str:
        return f"{self.registry.model_uri}/{ALIASES}/{alias}/{rev:08d}.json"

    def _raw(self, alias: Optional[str]) -> List[Tuple[str, int, str]]:
        """(alias, rev, text) of the records, sorted."""
        found = []
        if self.registry.is_gcs:
            prefix = f"{self._root}/{alias}/" if alias else f"{self._root}/"
            client = self.registry.storage.client
            for blob in client.list_blobs(self.registry._bucket_name, prefix=prefix):
                parts = blob.name[len(self._root) + 1:].split("/")
                if len(parts) == 2 and _REV_RE.match(parts[1]) and ALIAS_RE.match(parts[0]):
                    found.append((parts[0], int(parts[1][:8]), blob))
            found.sort(key=lambda t: (t[0], t[1]))
            return [(a, rev, blob.download_as_bytes().decode()) for a, rev, blob in found]
        if not os.path.isdir(self._root):
            return []
        names = [alias] if alias else sorted(os.listdir(self._root))
        for name in names:
            folder = os.path.join(self._root, name)
            if not ALIAS_RE.match(name) or not os.path.isdir(folder):
                continue
            for f in os.listdir(folder):
                m = _REV_RE.match(f)
                if m:
                    found.append((name, int(m.group(1)), os.path.join(folder, f)))
        found.sort(key=lambda t: (t[0], t[1]))
        out = []
        for name, rev, path in found:
            with open(path, encoding="utf-8") as fh:
                out.append((name, rev, fh.read()))
        return out

    def _head(self, alias: str) -> Optional[Move]:
        records = self._records(alias)
        return records[-1] if records else None

    def get(self, alias: str) -> Optional[int]:
        """The version the alias names, or None when it was never set."""
        head = self._head(check_alias(alias))
        return None if head is None else head.version

    def current(self) -> Dict[str, Move]:
        """{alias: its latest move} for every alias ever set."""
        out: Dict[str, Move] = {}
        for move in self._records():
            out[move.alias] = move
        return out

    def history(self, alias: Optional[str] = None) -> List[Move]:
        """Every move (of one alias, or of all), oldest first."""
        records = self._records(check_alias(alias) if alias else None)
        return sorted(records, key=lambda m: (m.time or "", m.alias, m.rev))

    # ------------------------------------------------------------------------- moving
    def check_target(self, version) -> int:
        """The version when an alias may point at it: complete, its files matching the
        manifest (sizes and SHA-256), blessed; else a one-line RegistryError saying which."""
        reg = self.registry
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise RegistryError(f"version must be an integer, got {version!r}") from None
        if version in reg.incomplete():
            raise RegistryError(f"cannot point an alias at {reg.incomplete_text(version)}")
        versions = reg.versions()
        if version not in versions:
            have = version_ranges(versions) if versions else "none"
            raise RegistryError(f"cannot point an alias at version {version} of "
                                f"{reg.model_name!r}: it does not exist in {reg.uri} "
                                f"(versions: {have})")
        problem = reg.verify(version, hashes=True)
        if problem is None and reg.is_gcs:
            try:
                reg.local_path(version)  # downloaded and checked file by file
            except RegistryError as e:
                problem = str(e)
        if problem:
            raise RegistryError(f"cannot point an alias at {problem}")
        if not is_blessed(reg.show(version)):
            raise RegistryError(f"cannot point an alias at version {version}: its manifest "
                                "records no blessing (blessing.blessed is not true)")
        return version

    def move(self, alias: str, version, *, action: str = "set", reason: Optional[str] = None,
             run: Optional[Dict[str, Any]] = None, expect: Any = ANY) -> Move:
        """Points `alias` at `version` (checked by check_target) and records the move.

        `expect`: the version the caller believes the alias names now (None: unset); when
        given and different, nothing is written (AliasConflict). Whatever the caller
        believes, a concurrent move between this call's read and its write is a conflict too.
        """
        check_alias(alias)
        if action not in ACTIONS:
            raise RegistryError(f"action {action!r} is not one of {ACTIONS}")
        head = self._head(alias)
        if expect is not ANY and (head.version if head else None) != expect:
            raise AliasConflict(self._conflict_text(alias, head, expect))
        version = self.check_target(version)
        move = Move(alias=alias, rev=(head.rev if head else 0) + 1, version=version,
                    from_version=head.version if head else None, action=action,
                    reason=reason, user=_whoami(), host=socket.gethostname(), time=_now(),
                    run=dict(run) if run else None)
        record = dict(move.to_json(), model_name=self.registry.model_name, pid=os.getpid())
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
        if not self._create(alias, move.rev, data):
            winner = self._head(alias)
            raise AliasConflict(self._conflict_text(alias, winner, None, mine=version))
        log.info("registry %s: %s %s -> %s", self.registry.model_uri, alias,
                 move.from_version, move.version)
        return move

    def rollback(self, alias: str, *, reason: Optional[str] = None,
                 run: Optional[Dict[str, Any]] = None) -> Move:
        """Points the alias back at its previous target (the `from` of its latest move)."""
        head = self._head(check_alias(alias))
        if head is None:
            raise RegistryError(f"alias {alias!r} of {self.registry.model_name!r} was never set: "
                                "nothing to roll back")
        if head.from_version is None:
            raise RegistryError(f"alias {alias!r} has no previous version: its first move set it "
                                f"to version {head.version}")
        return self.move(alias, head.from_version, action="rollback", reason=reason, run=run,
                         expect=head.version)

    def _conflict_text(self, alias: str, head: Optional[Move], expected: Optional[int],
                       mine: Optional[int] = None) -> str:
        now = "unset" if head is None else f"version {head.version}"
        who = "" if head is None else (f" (moved by {head.user}@{head.host} at {head.time}"
                                       f"{', run ' + str(head.run.get('run_id')) if head.run else ''})")
        if mine is not None:
            return (f"alias {alias!r} was moved by someone else while this move was checked: it "
                    f"names {now}{who}; version {mine} was not set (run it again to move it from "
                    "there)")
        return f"alias {alias!r} names {now}{who}, not version {expected}; not moved"

    def _create(self, alias: str, rev: int, data: bytes) -> bool:
        """Creates record rev of alias; False when it exists (someone else moved first)."""
        name = f"{rev:08d}.json"
        if self.registry.is_gcs:
            return self.registry._create_only(f"{self._root}/{alias}/{name}", data=data)
        folder = os.path.join(self._root, alias)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, os.path.join(folder, name))
            except OSError as e:
                if e.errno == errno.EEXIST:
                    return False
                raise
            _fsync_dir(folder)
            return True
        finally:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------- model refs
@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: the model, and an alias or a version (neither: latest)."""
    model_name: str
    alias: Optional[str] = None  # None or LATEST: the newest intact blessed version
    version: Optional[int] = None
    registry_uri: Optional[str] = None  # when the ref carried one

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.model_name}/{self.version}"
        return f"{self.model_name}@{self.alias or LATEST}"


def looks_like_ref(text: str) -> bool:
    """True for text written as a model ref with an alias (NAME@ALIAS, @ALIAS, URI/NAME@ALIAS)."""
    return "@" in os.path.basename(text.rstrip("/"))


def parse_ref(text: str, default_model: str = DEFAULT_MODEL_NAME) -> ModelRef:
    """NAME@ALIAS, @ALIAS, NAME@latest, NAME/N, NAME, or URI/NAME@ALIAS -> ModelRef.

    One-line RegistryError for anything else."""
    if not text or not text.strip():
        raise RegistryError("empty model reference; expected NAME@ALIAS, @ALIAS, NAME/N or NAME")
    text = text.strip()
    head, at, alias = text.rpartition("@")
    if at:
        if alias != LATEST:
            check_alias(alias)
        uri, _, name = head.rpartition("/") if "/" in head else ("", "", head)
        name = name or default_model
        return ModelRef(name, alias, None, uri or None)
    head, slash, tail = text.rpartition("/")
    if slash and tail.isdigit():
        if tail.startswith("0") or int(tail) == 0:
            raise RegistryError(f"{text!r}: versions are positive integers without leading zeros")
        uri, _, name = head.rpartition("/") if "/" in head else ("", "", head)
        return ModelRef(name or default_model, None, int(tail), uri or None)
    if slash:
        return ModelRef(tail, None, None, head or None)
    return ModelRef(text, None, None, None)


def newest_blessed(reg: Registry) -> int:
    """`latest`: the newest intact version whose manifest records a blessing (the pusher
    registers blessed models only; a version pushed by other means without one is skipped, as
    are damaged ones, each with a warning)."""
    for version in reversed(reg.versions()):
        problem = reg.verify(version, hashes=True)
        if problem is None and not is_blessed(reg.show(version)):
            problem = f"version {version} records no blessing"
        if problem is None:
            return version
        log.warning("registry %s: latest skips %s", reg.model_uri, problem)
    raise RegistryError(f"registry {reg.uri} holds no intact blessed version of model "
                        f"{reg.model_name!r}")


def peek_ref(registry_uri: Optional[str], ref, default_model: str = DEFAULT_MODEL_NAME, *,
             client=None) -> Optional[int]:
    """The version a ref names now, read cheaply and NOT checked (the alias's latest record,
    the highest complete version for latest, N for NAME/N; None when there is none): for a
    poller, such as deblur serve's, to see whether anything moved before resolve_ref hashes
    the files of the version it names."""
    ref = parse_ref(ref, default_model) if isinstance(ref, str) else ref
    reg = Registry(ref.registry_uri or registry_uri, ref.model_name, client=client)
    if ref.version is not None:
        return ref.version
    if ref.alias in (None, LATEST):
        versions = reg.versions()
        return versions[-1] if versions else None
    return Aliases(reg).get(ref.alias)


@dataclasses.dataclass
class Resolved:
    registry: Registry
    version: int
    alias: Optional[str]  # the alias the ref named (not "latest"), or None
    manifest: Dict[str, Any]
    path: str  # the local SavedModel folder, already checked (Registry.local_path's answer)


def resolve_ref(registry_uri: Optional[str], ref, default_model: str = DEFAULT_MODEL_NAME, *,
                client=None, cache_dir: Optional[str] = None) -> Resolved:
    """The version a ref names, checked: complete, files matching the manifest (a gs:// one is
    downloaded into the cache and checked), and for an alias blessed. `latest` (and a bare
    NAME) is the newest intact blessed version (newest_blessed). The ref's own
    registry URI, when it has one, wins over registry_uri."""
    ref = parse_ref(ref, default_model) if isinstance(ref, str) else ref
    uri = ref.registry_uri or registry_uri
    if not uri:
        raise RegistryError(f"no registry for {ref}: pass --registry URI")
    reg = Registry(uri, ref.model_name, client=client, cache_dir=cache_dir)
    if ref.version is not None:
        version = ref.version
        if version in reg.incomplete():
            raise RegistryError(reg.incomplete_text(version))
        reg.show(version)  # exists, manifest whole
        problem = reg.verify(version, hashes=True)
        if problem:
            raise RegistryError(problem)
    elif ref.alias in (None, LATEST):
        version = newest_blessed(reg)
    else:
        version = Aliases(reg).get(ref.alias)
        if version is None:
            set_ = sorted(Aliases(reg).current())
            raise RegistryError(f"alias {ref.alias!r} of {reg.model_name!r} is not set in {reg.uri} "
                                f"(aliases: {', '.join(set_) if set_ else 'none'}); set it with "
                                f"`deblur registry promote VERSION --to {ref.alias}`")
        try:
            Aliases(reg).check_target(version)
        except RegistryError as e:
            raise RegistryError(f"{ref.model_name}@{ref.alias} names version {version}, which is "
                                f"not servable: {e}") from None
    # a gs:// version is downloaded and checked here; a local one was hashed above: the
    # caller loads `path` without hashing the files a second time
    path = reg.local_path(version) if reg.is_gcs else reg.version_uri(version)
    return Resolved(reg, version, None if ref.alias in (None, LATEST) else ref.alias,
                    reg.show(version), path)


# ------------------------------------------------------------------- TF Serving config
def tf_serving_config(registry: Registry, base_path: Optional[str] = None) -> str:
    """A TF Serving models.config (ModelServerConfig in text format) for the model: the
    versions the aliases name, served by number, with version_labels from the aliases.

    The version policy is `specific` (only those versions), so a numeric folder that is not a
    registry version (no manifest) is never loaded, whatever its number. With no alias set, the
    newest intact version is served unlabelled. TF Serving assigns a label only to a version
    it has loaded (unless --allow_version_labels_for_unavailable_models)."""
    aliases = {a: m.version for a, m in sorted(Aliases(registry).current().items())}
    versions = sorted(set(aliases.values()))
    if not versions:
        found = registry.latest(hashes=True)
        if found is None:
            raise RegistryError(f"registry {registry.uri} holds no intact version of model "
                                f"{registry.model_name!r}")
        versions = [found[0]]
    path = base_path or registry.model_uri
    lines = ["model_config_list {", "  config {",
             f"    name: {json.dumps(registry.model_name)}",
             f"    base_path: {json.dumps(path)}",
             '    model_platform: "tensorflow"',
             "    model_version_policy {", "      specific {"]
    lines += [f"        versions: {v}" for v in versions]
    lines += ["      }", "    }"]
    for alias, version in aliases.items():
        lines += ["    version_labels {", f"      key: {json.dumps(alias)}",
                  f"      value: {version}", "    }"]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"
