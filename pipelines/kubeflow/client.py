"""Kubeflow Pipelines through kfp.Client: pipeline versions, runs and recurring runs.

    upload(config, "deblur-icdpm.json", host)      # a version of the pipeline
    submit(config, spec_file, host, schedule=...)  # a run, or a recurring (cron) run
    schedules(config, host, "list")                # list, pause, resume, delete

Every KFP answer is checked at one place (_kfp): a refusal, a transport error, or an HTML page
where the API should answer (a login page, a wrong port-forward) is one SubmitError line.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

from core import version as code_version
from pipelines import run_params
from pipelines.config import REPO_ROOT, ConfigError, PipelineConfig
from pipelines.kubeflow import images
from pipelines.kubeflow.compiler import (_load_spec, _package_for, _package_spec,
                                         compiled_defaults, parameter_types, run_arguments)
from pipelines.kubeflow.cron import validate_cron
from pipelines.kubeflow.config import kubeflow_section


class SubmitError(ValueError):
    """The KFP API could not be reached or refused the request (one line for the CLI)."""


# ---- submit ---------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 3xx is answered, not followed
        return None


def _not_the_api(host: str, answered: str, where: str) -> "SubmitError":
    return SubmitError(f"KFP at {host} answered {answered} on {where}, not the KFP API's JSON "
                       f"(a login page, or the wrong port?)")


def _looks_html(content_type: Optional[str], text) -> bool:
    if isinstance(text, bytes):
        text = text[:200].decode("utf-8", "replace")
    head = (text or "")[:200].lstrip().lower()
    return "html" in (content_type or "").lower() or head.startswith(("<!doctype", "<html", "<"))


def check_answer(host: str, where: str, content_type: Optional[str], text) -> None:
    """One place for what the KFP API answers: JSON. An HTML page (an auth proxy's login page,
    the UI or another service behind a wrong port-forward) or any other non-JSON body is
    refused in one line, before kfp_server_api reads it into an empty model."""
    if _looks_html(content_type, text):
        raise _not_the_api(host, "HTML", where)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not (text or "").strip():
        return  # an empty body (e.g. enable/disable) carries nothing to read
    try:
        json.loads(text)
    except ValueError:
        raise _not_the_api(host, f"{(content_type or 'no content type').split(';')[0]} "
                                 f"that is not JSON", where) from None


def _check_host(host: str, token: Optional[str] = None, check: bool = True) -> str:
    """The host URL, after a GET of the API's healthz that must answer JSON (`token`: sent as
    a Bearer token); `check` False: the URL's form only."""
    host = host.rstrip("/")
    if not re.match(r"https?://", host):
        raise SubmitError(f"--host {host}: give the KFP API URL with http:// or https://, "
                          f"e.g. http://localhost:8080 after `kubectl port-forward`")
    if not check:
        return host
    url = f"{host}/apis/v2beta1/healthz"
    where = "GET /apis/v2beta1/healthz"
    try:
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=10) as r:
            check_answer(host, where, r.headers.get("Content-Type"), r.read())
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:
            raise _not_the_api(host, f"a redirect ({e.code}) to "
                                     f"{e.headers.get('Location') or 'nowhere'}", where) from e
        raise SubmitError(f"KFP at {host} answered {e.code} {e.reason} on {url}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SubmitError(f"cannot reach the KFP API at {host}: {reason}") from e
    return host



# ---- pipeline versions, runs, schedules --------------------------------------------------------
def project_version() -> str:
    """The project's version (pyproject.toml's, as installed)."""
    return code_version.package_version() or "0"


def git_commit(repo: str = REPO_ROOT) -> Tuple[Optional[str], bool]:
    """(short commit, work tree has uncommitted changes) of the checkout, as version names
    spell it (core/version.py: the same commit the registry's manifests record); (None, False)
    when unknown. A commit from $DEBLUR_GIT_SHA (no .git) counts as clean."""
    sha, dirty = code_version.git_commit(repo)
    return (sha[:10] if sha else None), bool(dirty)


def file_digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def version_name(package: str, commit: Optional[str] = None, dirty: bool = False) -> str:
    """<project version>-<git commit>-<first 8 of the package's SHA-256>: the code the package
    was compiled from, and the package itself (its config and its images' digests), so one
    commit compiled with another config, or uploaded after an image was pushed again, is
    another version; a work tree with uncommitted changes says -dirty- before the hash, and
    outside git the hash stands alone."""
    digest = file_digest(package)[:8]
    base = project_version()
    if commit is None:
        return f"{base}-{digest}"
    return f"{base}-{commit}-" + ("dirty-" if dirty else "") + digest


_DIGEST_RE = re.compile(r"package sha256:([0-9a-f]{64})")


def _api_errors():
    import kfp_server_api
    import urllib3

    return kfp_server_api, urllib3


def client_options(kf) -> Dict[str, Any]:
    """kfp.Client's keyword arguments for a real cluster's front door, from config.kubeflow:
    the profile namespace, an IAP client id, and a token file sent as a Bearer token (kfp only
    reads $KF_PIPELINES_SA_TOKEN_PATH inside a cluster and without a host; here it is read for
    every host). A token file named but unreadable is a one-line ConfigError."""
    if kf is None:
        return {}
    opts: Dict[str, Any] = {}
    if kf.namespace:
        opts["namespace"] = kf.namespace
    if kf.iap_client_id:
        opts["client_id"] = kf.iap_client_id
    path = kf.token_path or os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if path:
        try:
            with open(path) as f:
                token = f.read().strip()
        except OSError as e:
            raise ConfigError(f"the KFP token file {path} (kubeflow.token_path or "
                              f"KF_PIPELINES_SA_TOKEN_PATH) cannot be read: {e.strerror}") from None
        if not token:
            raise ConfigError(f"the KFP token file {path} is empty")
        opts["existing_token"] = token
    return opts


@contextlib.contextmanager
def _kfp(host: str, kf=None):
    """A kfp.Client for `host` (with config.kubeflow's front-door options, client_options),
    with the API's refusals and transport errors as one line."""
    kfp_server_api, urllib3 = _api_errors()
    import kfp

    options = client_options(kf)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own links
            client = kfp.Client(host=host, **options)
            _check_every_answer(client, host)
            yield client
    except kfp_server_api.ApiException as e:
        body = (e.body or b"").decode() if isinstance(e.body, bytes) else (e.body or "")
        text = body.strip()
        if text and _looks_html((e.headers or {}).get("Content-Type"), text):
            raise _not_the_api(host, f"{e.status} {e.reason} with HTML",
                               "a request of kfp.Client") from e
        try:
            text = json.loads(text).get("error") or json.loads(text).get("message") or text
        except (ValueError, AttributeError):
            pass
        raise SubmitError(f"KFP at {host} refused the request: {e.status} {e.reason}"
                          f"{': ' + str(text).splitlines()[0][:300] if text else ''}") from e
    except (urllib3.exceptions.HTTPError, TimeoutError, OSError) as e:
        raise SubmitError(f"KFP at {host}: {e}") from e


def _check_every_answer(client, host: str) -> None:
    """Every response the client's kfp_server_api.ApiClient reads goes through check_answer
    (urllib3 follows a redirect to a login page: its HTML is caught here)."""
    api = client._healthz_api.api_client
    read = api.deserialize

    def deserialize(response, response_type):
        resp = getattr(response, "urllib3_response", None)
        url = getattr(resp, "geturl", lambda: None)() if resp is not None else None
        path = urllib.parse.urlsplit(url).path if url else ""
        check_answer(host, f"a request of kfp.Client{' (' + path + ')' if path else ''}",
                     response.getheader("content-type"), response.data)
        return read(response, response_type)

    api.deserialize = deserialize


def _host(config: PipelineConfig, host: Optional[str]) -> str:
    kf = kubeflow_section(config)
    host = host or kf.host
    if not host:
        raise ConfigError("no KFP host: pass --host URL or set kubeflow.host")
    # the token file is read before any request: a missing one is a config error
    options = client_options(kf)
    if "client_id" in options:  # behind IAP only kfp's own token gets through: kfp.Client's
        return _check_host(host, check=False)  # answers are still checked (_kfp)
    return _check_host(host, options.get("existing_token"))


def dev_pipeline(config: PipelineConfig) -> str:
    """The KFP pipeline of experiments: every `deblur submit` and `deblur pipeline upload`."""
    return kubeflow_section(config).dev_pipeline or f"{config.runner.pipeline_name}-dev"


def release_pipeline(config: PipelineConfig) -> str:
    """The KFP pipeline schedules run: only `deblur pipeline release` adds versions to it."""
    return config.runner.pipeline_name


_PIPELINE_DESCRIPTIONS = {
    "dev": "experiments: a version per `deblur submit` / `deblur pipeline upload`, from any "
           "work tree; schedules never run these",
    "release": "releases: clean commits only (`deblur pipeline release`); the schedules run "
               "its newest version (or the version they pin)",
}


def _pipeline_id(client, name: str, kind: str) -> Tuple[str, bool]:
    """(id, created now) of the KFP pipeline `name`, created empty when missing (upload_pipeline
    would add a first version named like the pipeline itself)."""
    import kfp_server_api

    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is not None:
        return pipeline_id, False
    p = client._pipelines_api.create_pipeline(body=kfp_server_api.V2beta1Pipeline(
        display_name=name, description=f"{name}: deblurring diffusion model (deblur-pipeline), "
                                       f"{_PIPELINE_DESCRIPTIONS[kind]}"))
    return p.pipeline_id, True


def _upload(client, config: PipelineConfig, package: str,
            name_override: Optional[str] = None, kind: str = "dev",
            commit_dirty: Optional[Tuple[Optional[str], bool]] = None,
            note: str = "") -> Dict[str, Any]:
    """Registers `package` as a version of the dev or the release pipeline (created when
    missing); a version of that name holding the same package (SHA-256 in its description) is
    reused. `commit_dirty`: the code's (commit, uncommitted changes), default this checkout's."""
    name = release_pipeline(config) if kind == "release" else dev_pipeline(config)
    commit, dirty = commit_dirty if commit_dirty is not None else git_commit()
    vname = name_override or version_name(package, commit, dirty)
    digest = file_digest(package)
    pipeline_id, created_pipeline = _pipeline_id(client, name, kind)
    found = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=2, filter=json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": vname}]}))
    existing = (found.pipeline_versions or []) if found is not None else []
    if existing:
        v = existing[0]
        m = _DIGEST_RE.search(v.description or "")
        if not m or m.group(1) != digest:
            raise SubmitError(
                f"pipeline {name} already has a version {vname} with another package (its "
                f"description: {(v.description or '')[:120]!r}); commit the change that made "
                f"it differ, or name the version with --version-name")
        return {"pipeline": name, "pipeline_id": pipeline_id,
                "version_id": v.pipeline_version_id, "version_name": vname, "created": False,
                "created_pipeline": created_pipeline, "digest": digest}
    description = (f"deblur-pipeline {project_version()}, commit {commit or 'unknown'}"
                   f"{' with uncommitted changes' if dirty else ''}; package sha256:{digest}"
                   f"; {images.describe(_package_spec(package))}"  # images by digest, config
                   f"{'; ' + note if note else ''}")
    v = client.upload_pipeline_version(package, vname, pipeline_id=pipeline_id,
                                       description=description)
    return {"pipeline": name, "pipeline_id": pipeline_id, "version_id": v.pipeline_version_id,
            "version_name": vname, "created": True, "created_pipeline": created_pipeline,
            "digest": digest}


def upload(config: PipelineConfig, spec_file: str, host: Optional[str],
           version: Optional[str] = None) -> Dict[str, Any]:
    """`deblur pipeline upload`: the compiled package as a new version of the dev pipeline
    (dev_pipeline; the UI's Pipelines page lists it and its versions; a run started there
    takes the version's spec and parameter defaults). Schedules never run these versions."""
    _load_spec(spec_file)
    package, _, temporary = _package_for(spec_file, config)  # images pinned: before any request
    try:
        host = _host(config, host)
        with _kfp(host, kubeflow_section(config)) as client:
            r = _upload(client, config, package, version)
    finally:
        if temporary:
            os.unlink(package)
    r.update(host=host, url=_version_url(host, r))
    return r


def _version_url(host: str, ver: Dict[str, Any]) -> str:
    return f"{host}/#/pipelines/details/{ver['pipeline_id']}/version/{ver['version_id']}"


# "deblur-pipeline 0.1.0, commit ab12cd34ef[ with uncommitted changes]; package sha256:..."
_COMMIT_RE = re.compile(r"\bcommit (\S+?)( with uncommitted changes)?;")


def _find_version(client, pipeline_id: str, name: str):
    found = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=2, filter=json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}))
    versions = (found.pipeline_versions or []) if found is not None else []
    return versions[0] if versions else None


def newest_version(client, pipeline_id: str):
    """The version KFP (>= 2.5.0) runs for a reference without a version id: the newest by
    creation time (the API server's GetLatestPipelineVersion); None when there is none."""
    r = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1,
                                      sort_by="created_at desc")
    versions = (r.pipeline_versions or []) if r is not None else []
    return versions[0] if versions else None


def _package_of_version(v, path: str) -> str:
    """The KFP package of a stored version (its pipeline spec and, when it has one, its
    platform spec, as the API returns them), written to `path`."""
    import yaml

    stored = v.pipeline_spec or {}
    if "pipeline_spec" in stored:  # a spec with a platform spec
        docs = [stored["pipeline_spec"]] + ([stored["platform_spec"]]
                                             if stored.get("platform_spec") else [])
    else:
        docs = [stored]
    if not docs[0] or "root" not in docs[0]:
        raise SubmitError(f"version {v.display_name} has no pipeline spec in the API's answer")
    with open(path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=True)
    return path


def release(config: PipelineConfig, host: Optional[str], spec_file: Optional[str] = None,
            version: Optional[str] = None) -> Dict[str, Any]:
    """`deblur pipeline release [VERSION]`: the only way a version reaches the release pipeline
    (release_pipeline), whose newest version is what every following schedule runs next.

    VERSION: a version of the dev pipeline, released as it is (the package you ran is the one
    the schedule will run); its description must name a commit without uncommitted changes.
    No VERSION: `spec_file`, compiled from this checkout, which must be a clean git work tree.
    Releasing the same package under the same name again changes nothing."""
    import tempfile

    if version is None:
        if spec_file is None:
            raise ConfigError("release: name a dev version, or compile this checkout (--spec)")
        commit, dirty = git_commit()
        if commit is None:
            raise ConfigError("release: this checkout is not a git work tree; a release names "
                              "the commit it was built from")
        if dirty:
            raise ConfigError(f"release: the work tree at {REPO_ROOT} has uncommitted changes; "
                              f"commit them first (a release is a clean commit), or release a "
                              f"dev version that was: deblur pipeline release VERSION")
        _load_spec(spec_file)
        package, _, temporary = _package_for(spec_file, config)  # images pinned first
        try:
            host = _host(config, host)
            with _kfp(host, kubeflow_section(config)) as client:
                r = _upload(client, config, package, None, kind="release",
                            commit_dirty=(commit, False), note="released from a clean checkout")
        finally:
            if temporary:
                os.unlink(package)
        r.update(host=host, url=_version_url(host, r), released_from=None)
        return r
    host = _host(config, host)
    with _kfp(host, kubeflow_section(config)) as client:
        dev = dev_pipeline(config)
        dev_id = client.get_pipeline_id(dev)
        v = _find_version(client, dev_id, version) if dev_id else None
        if v is None:
            raise SubmitError(f"release: pipeline {dev} has no version {version} (deblur "
                              f"pipeline versions lists them)")
        m = _COMMIT_RE.search(v.description or "")
        if not m or m.group(1) == "unknown" or m.group(2):
            why = ("was built with uncommitted changes" if m and m.group(2)
                   else "names no commit")
            raise SubmitError(f"release: {dev} version {version} {why}; only a clean commit is "
                              f"released (commit, submit again, release that version)")
        fd, package = tempfile.mkstemp(suffix=".yaml", prefix="deblur-release-")
        os.close(fd)
        try:
            _package_of_version(client.get_pipeline_version(dev_id, v.pipeline_version_id),
                                package)
            r = _upload(client, config, package, version, kind="release",
                        commit_dirty=(m.group(1), False),
                        note=f"released from {dev} version {version}")
        finally:
            os.unlink(package)
    r.update(host=host, url=_version_url(host, r), released_from=f"{dev} {version}")
    return r


def default_run_name(pipeline: str, version: str, changed: Dict[str, Any]) -> str:
    """The pipeline, its version and the parameters that differ from the compiled defaults (a
    long data_sources as its length), e.g. 'deblur-icdpm 0.1.0-ab12cd34ef train_steps=5000'."""
    parts = []
    for k in sorted(changed):
        v = changed[k]
        text = v if isinstance(v, str) else json.dumps(v)
        if k == "data_sources":
            try:
                text = f"{len(json.loads(v))} source(s)"
            except (TypeError, ValueError):
                pass
        parts.append(f"{k}={text}" if len(text) <= 40 else f"{k}={text[:37]}...")
    return " ".join([pipeline, version] + parts)


def submit(config: PipelineConfig, spec_file: Optional[str], host: Optional[str],
           schedule: Optional[str] = None, experiment: Optional[str] = None,
           run_name: Optional[str] = None, params: Optional[Dict[str, str]] = None,
           no_cache: bool = False, pin_version: bool = False,
           version: Optional[str] = None) -> Dict[str, Any]:
    """A run of this checkout's package, or with a cron `schedule` a recurring run of a release,
    in `experiment` (created when missing), with `params` ({run parameter: value text},
    `--param`) over the version's defaults. Returns ids and UI links.

    A run: the package becomes a version of the dev pipeline (or reuses the same one), and the
    run is sent every parameter's value (the compiled defaults with `params` over them). It
    never changes what a schedule runs, whatever the work tree holds.

    A recurring run uploads nothing: it runs the release pipeline (`deblur pipeline release`).
    It references the pipeline without a version, so each of its runs takes the newest release
    (KFP backend >= 2.5.0; infra/README.md), and sends only `params`, so that the release's
    defaults fill the rest; `pin_version` pins it to today's newest release, `version` to the
    release of that name (KFP's API cannot move a recurring run to another version: delete it
    and submit again). `no_cache`: the run parameter cache=off (every task runs again: compiler.add_cache_salt)."""
    kf = kubeflow_section(config)
    if schedule is not None:
        schedule = validate_cron(schedule)
    if not kf.pipeline_root:
        raise ConfigError("kubeflow.pipeline_root is not set (gs://BUCKET/pipeline_root)")
    values = dict(params or {})
    if schedule is not None:
        return _schedule_release(config, host, schedule, experiment, run_name, values,
                                 no_cache, pin_version, version)
    spec = _load_spec(spec_file)
    if no_cache:
        values[run_params.CACHE] = _cache_off(spec, spec_file)
    overrides = run_arguments(config, spec, values)  # before any request
    host = _host(config, host)
    experiment = experiment or kf.kfp_experiment
    defaults = compiled_defaults(spec)
    changed = {k: v for k, v in overrides.items() if defaults.get(k) != v}
    package, _, temporary = _package_for(spec_file, config)
    result: Dict[str, Any] = {"host": host, "experiment": experiment,
                              "pipeline_root": kf.pipeline_root}
    try:
        with _kfp(host, kf) as client:
            ver = _upload(client, config, package, version)
            result["pipeline_version"] = ver
            exp = client.create_experiment(name=experiment)
            result["experiment_id"] = exp.experiment_id
            result["parameters"] = {**defaults, **overrides}
            run = client.run_pipeline(
                experiment_id=exp.experiment_id,
                job_name=run_name or default_run_name(ver["pipeline"], ver["version_name"],
                                                      changed),
                params=result["parameters"], pipeline_id=ver["pipeline_id"],
                version_id=ver["version_id"], pipeline_root=kf.pipeline_root,
                service_account=kf.service_account)
            result.update(kind="run", id=run.run_id, name=run.display_name,
                          url=f"{host}/#/runs/details/{run.run_id}")
    finally:
        if temporary:
            os.unlink(package)
    return result


def _cache_off(spec: Dict[str, Any], where: str) -> str:
    if run_params.CACHE not in parameter_types(spec):
        raise ConfigError(f"--no-cache: {where} has no `{run_params.CACHE}` run parameter; "
                          f"compile it again with this version of deblur")
    return "off"


def _schedule_release(config: PipelineConfig, host: Optional[str], schedule: str,
                      experiment: Optional[str], run_name: Optional[str],
                      values: Dict[str, str], no_cache: bool, pin_version: bool,
                      version: Optional[str]) -> Dict[str, Any]:
    """submit(schedule=...): a recurring run of the release pipeline (see submit)."""
    kf = kubeflow_section(config)
    host = _host(config, host)
    experiment = experiment or kf.kfp_experiment
    name = release_pipeline(config)
    result: Dict[str, Any] = {"host": host, "experiment": experiment,
                              "pipeline_root": kf.pipeline_root}
    with _kfp(host, kf) as client:
        pipeline_id = client.get_pipeline_id(name)
        v = None
        if pipeline_id is not None:
            v = (_find_version(client, pipeline_id, version) if version
                 else newest_version(client, pipeline_id))
        if v is None:
            raise SubmitError(
                f"pipeline {name} has no {'release ' + version if version else 'release'} "
                f"yet: schedules run releases only (deblur pipeline release [DEV_VERSION])")
        pin = pin_version or version is not None
        spec = _package_spec_of(client.get_pipeline_version(pipeline_id, v.pipeline_version_id))
        if no_cache:
            values[run_params.CACHE] = _cache_off(spec, f"release {v.display_name}")
        overrides = run_arguments(config, spec, values)  # checked against what will run
        defaults = compiled_defaults(spec)
        changed = {k: x for k, x in overrides.items() if defaults.get(k) != x}
        ver = {"pipeline": name, "pipeline_id": pipeline_id,
               "version_id": v.pipeline_version_id, "version_name": v.display_name,
               "created": False}
        result["pipeline_version"] = ver
        exp = client.create_experiment(name=experiment)
        result["experiment_id"] = exp.experiment_id
        result["parameters"] = overrides
        result.update(_create_schedule(
            client, config, exp.experiment_id, ver, schedule, overrides, pin,
            run_name or default_run_name(
                name, v.display_name if pin else "(newest release)", changed) + f" {schedule}"))
        result["url"] = f"{host}/#/recurringrun/details/{result['id']}"
    return result


def _package_spec_of(v) -> Dict[str, Any]:
    stored = v.pipeline_spec or {}
    return stored.get("pipeline_spec", stored) if "root" not in stored else stored


def _create_schedule(client, config: PipelineConfig, experiment_id: str, ver: Dict[str, Any],
                     schedule: str, params: Dict[str, Any], pin_version: bool,
                     name: str) -> Dict[str, Any]:
    import kfp_server_api

    kf = kubeflow_section(config)
    body = kfp_server_api.V2beta1RecurringRun(
        experiment_id=experiment_id, display_name=name,
        description=f"scheduled retraining of {ver['pipeline']}"
                    + (f", release {ver['version_name']}" if pin_version
                       else ", its newest release at each run"),
        mode=kfp_server_api.RecurringRunMode.ENABLE,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=ver["pipeline_id"],
            pipeline_version_id=ver["version_id"] if pin_version else None),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(pipeline_root=kf.pipeline_root,
                                                           parameters=params),
        trigger=kfp_server_api.V2beta1Trigger(
            cron_schedule=kfp_server_api.V2beta1CronSchedule(cron=schedule)),
        max_concurrency=1, no_catchup=True, service_account=kf.service_account)
    rr = client._recurring_run_api.create_recurring_run(body=body)
    return {"kind": "recurring_run", "id": rr.recurring_run_id, "schedule": schedule,
            "name": rr.display_name, "follows": "pinned" if pin_version else "newest"}


SCHEDULE_ACTIONS = ("list", "pause", "resume", "delete")


def schedules(config: PipelineConfig, host: Optional[str], action: str = "list",
              ids: Sequence[str] = (), experiment: Optional[str] = None,
              all_experiments: bool = False) -> Dict[str, Any]:
    """`deblur schedule list|pause|resume|delete`: the recurring runs of the config's
    experiment (list), or the named ones (pause = disable, resume = enable, delete)."""
    if action not in SCHEDULE_ACTIONS:
        raise ConfigError(f"schedule {action}: expected one of {', '.join(SCHEDULE_ACTIONS)}")
    if action != "list" and not ids:
        raise ConfigError(f"schedule {action}: name the recurring run id(s) (deblur schedule "
                          f"list shows them)")
    host = _host(config, host)
    kf = kubeflow_section(config)
    experiment = experiment or kf.kfp_experiment
    out: Dict[str, Any] = {"host": host, "action": action, "experiment": experiment}
    with _kfp(host, kf) as client:
        if action == "list":
            experiment_id = None
            if not all_experiments:
                experiment_id = _experiment_id(client, experiment)
                if experiment_id is None:
                    out["schedules"] = []
                    return out
            rows = _all_pages(client.list_recurring_runs, "recurring_runs",
                              experiment_id=experiment_id, sort_by="created_at desc")
            out["schedules"] = [_schedule_row(client, rr) for rr in rows]
            return out
        done = []
        for rid in ids:
            if action == "pause":
                client.disable_recurring_run(rid)
            elif action == "resume":
                client.enable_recurring_run(rid)
            else:
                client.delete_recurring_run(rid)
            done.append(rid)
        out["ids"] = done
        if action != "delete":
            out["schedules"] = [_schedule_row(client, client.get_recurring_run(rid))
                                for rid in done]
    return out


def _all_pages(call, key: str, **kwargs) -> list:
    rows, token = [], ""
    while True:
        r = call(page_token=token, page_size=100, **kwargs)
        rows += getattr(r, key) or []
        token = r.next_page_token or ""
        if not token:
            return rows


def versions(config: PipelineConfig, host: Optional[str], keep: Optional[int] = None,
             delete: bool = False) -> Dict[str, Any]:
    """`deblur pipeline versions [--keep N] [--delete]`: the versions of the release and dev
    pipelines, newest first, each with what protects it: the newest release (what following
    schedules run next) and every version a schedule pins, in any experiment. With `keep`, the
    versions after the N newest of each pipeline are marked for deletion, protected ones never;
    `delete` deletes them (without it, nothing changes: a dry run)."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
        raise ConfigError(f"--keep {keep!r}: expected an integer >= 0")
    if delete and keep is None:
        raise ConfigError("--delete needs --keep N (how many of each pipeline's newest to keep)")
    host = _host(config, host)
    out: Dict[str, Any] = {"host": host, "keep": keep, "deleted": [], "versions": []}
    with _kfp(host, kubeflow_section(config)) as client:
        pinned: Dict[str, List[str]] = {}
        following: Dict[str, List[str]] = {}
        for rr in _all_pages(client.list_recurring_runs, "recurring_runs"):
            ref = rr.pipeline_version_reference
            if ref is None or not ref.pipeline_id:
                continue
            if ref.pipeline_version_id:
                pinned.setdefault(ref.pipeline_version_id, []).append(rr.recurring_run_id)
            else:
                following.setdefault(ref.pipeline_id, []).append(rr.recurring_run_id)
        for kind, name in (("release", release_pipeline(config)), ("dev", dev_pipeline(config))):
            pipeline_id = client.get_pipeline_id(name)
            if pipeline_id is None:
                continue
            rows = _all_pages(client.list_pipeline_versions, "pipeline_versions",
                              pipeline_id=pipeline_id, sort_by="created_at desc")
            for i, v in enumerate(rows):
                why = []
                if i == 0 and kind == "release":
                    why.append("the newest release: what following schedules run next")
                elif i == 0 and pipeline_id in following:
                    why.append(f"newest: followed by {', '.join(following[pipeline_id])}")
                if v.pipeline_version_id in pinned:
                    why.append(f"pinned by {', '.join(pinned[v.pipeline_version_id])}")
                prune = keep is not None and i >= keep and not why
                out["versions"].append({
                    "pipeline": name, "kind": kind, "pipeline_id": pipeline_id,
                    "version_id": v.pipeline_version_id, "version_name": v.display_name,
                    "created_at": str(v.created_at or ""), "protected": "; ".join(why),
                    "action": "delete" if prune else "keep"})
        if delete:
            for row in out["versions"]:
                if row["action"] == "delete":
                    client.delete_pipeline_version(row["pipeline_id"], row["version_id"])
                    out["deleted"].append(row["version_id"])
    return out


def _experiment_id(client, name: str) -> Optional[str]:
    r = client.list_experiments(page_size=2, filter=json.dumps({"predicates": [{
        "operation": "EQUALS", "key": "display_name", "stringValue": name}]}))
    exps = r.experiments or []
    return exps[0].experiment_id if exps else None


def _schedule_row(client, rr) -> Dict[str, Any]:
    """One schedule, with the exact version its next run takes: the pinned one, or the
    pipeline's newest now (what KFP >= 2.5.0 resolves when the run starts)."""
    ref = rr.pipeline_version_reference
    trigger = rr.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else None
    every = (trigger.periodic_schedule.interval_second
             if trigger and trigger.periodic_schedule else None)
    pipeline = version = None
    follows = "inline"
    if ref is not None and ref.pipeline_id:
        try:
            pipeline = client.get_pipeline(ref.pipeline_id).display_name
        except Exception:  # noqa: BLE001 - a deleted pipeline: show its id
            pipeline = ref.pipeline_id
        if ref.pipeline_version_id:
            follows = "pinned"
            try:
                version = client.get_pipeline_version(ref.pipeline_id,
                                                      ref.pipeline_version_id).display_name
            except Exception:  # noqa: BLE001 - a deleted version: show its id
                version = f"{ref.pipeline_version_id} (deleted)"
        else:
            follows = "newest"
            v = newest_version(client, ref.pipeline_id)
            version = v.display_name if v is not None else "none (the pipeline has no version)"
    return {"id": rr.recurring_run_id, "name": rr.display_name,
            "status": rr.status, "mode": rr.mode,
            "schedule": cron or (f"every {every} s" if every else None),
            "pipeline": pipeline, "follows": follows,
            "version_id": ref.pipeline_version_id if ref is not None else None,
            "version": version or "inline spec (frozen at creation)",
            "parameters": dict((rr.runtime_config.parameters or {})
                               if rr.runtime_config else {})}
