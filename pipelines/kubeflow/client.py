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
from typing import Any, Dict, Optional, Sequence, Tuple

from pipelines import run_params
from pipelines.config import REPO_ROOT, ConfigError, PipelineConfig
from pipelines.kubeflow.compiler import (_load_spec, _package_for, compiled_defaults,
                                         parameter_types, run_arguments)
from pipelines.kubeflow.cron import validate_cron


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


def _check_host(host: str) -> str:
    host = host.rstrip("/")
    if not re.match(r"https?://", host):
        raise SubmitError(f"--host {host}: give the KFP API URL with http:// or https://, "
                          f"e.g. http://localhost:8080 after `kubectl port-forward`")
    url = f"{host}/apis/v2beta1/healthz"
    where = "GET /apis/v2beta1/healthz"
    try:
        with urllib.request.build_opener(_NoRedirect).open(url, timeout=10) as r:
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
    try:
        from importlib.metadata import version

        return version("deblur-pipeline")
    except Exception:  # noqa: BLE001 - not installed: read pyproject.toml
        with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        return m.group(1) if m else "0"


def git_commit(repo: str = REPO_ROOT) -> Tuple[Optional[str], bool]:
    """(short commit, work tree has uncommitted changes) of the checkout; (None, False) outside
    git."""
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short=10", "HEAD"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit.strip() or None, bool(dirty.strip())


def file_digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def version_name(package: str, commit: Optional[str] = None, dirty: bool = False) -> str:
    """<project version>-<git commit> of the code the package was compiled from; a work tree
    with uncommitted changes adds -dirty-<first 8 of the package's SHA-256>, and outside git
    the digest stands for the commit."""
    digest = file_digest(package)[:8]
    base = project_version()
    if commit is None:
        return f"{base}-{digest}"
    return f"{base}-{commit}" + (f"-dirty-{digest}" if dirty else "")


_DIGEST_RE = re.compile(r"package sha256:([0-9a-f]{64})")


def _api_errors():
    import kfp_server_api
    import urllib3

    return kfp_server_api, urllib3


@contextlib.contextmanager
def _kfp(host: str):
    """A kfp.Client for `host`, with the API's refusals and transport errors as one line."""
    kfp_server_api, urllib3 = _api_errors()
    import kfp

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own links
            client = kfp.Client(host=host)
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
    host = host or config.kubeflow.host
    if not host:
        raise ConfigError("no KFP host: pass --host URL or set kubeflow.host")
    return _check_host(host)



def _upload(client, config: PipelineConfig, package: str,
            name_override: Optional[str] = None) -> Dict[str, Any]:
    """Registers `package` as a version of the pipeline (created when missing); a version of
    that name holding the same package (SHA-256 in its description) is reused."""
    import kfp_server_api

    name = config.runner.pipeline_name
    commit, dirty = git_commit()
    vname = name_override or version_name(package, commit, dirty)
    digest = file_digest(package)
    pipeline_id = client.get_pipeline_id(name)
    created_pipeline = False
    if pipeline_id is None:
        # an empty pipeline, then our version: upload_pipeline would add a first version named
        # like the pipeline itself
        p = client._pipelines_api.create_pipeline(body=kfp_server_api.V2beta1Pipeline(
            display_name=name, description=f"{name}: deblurring diffusion model, retrained by "
                                           f"deblur-pipeline (deblur pipeline upload)"))
        pipeline_id, created_pipeline = p.pipeline_id, True
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
        return {"pipeline_id": pipeline_id, "version_id": v.pipeline_version_id,
                "version_name": vname, "created": False, "created_pipeline": created_pipeline,
                "digest": digest}
    description = (f"deblur-pipeline {project_version()}, commit {commit or 'unknown'}"
                   f"{' with uncommitted changes' if dirty else ''}; package sha256:{digest}")
    v = client.upload_pipeline_version(package, vname, pipeline_id=pipeline_id,
                                       description=description)
    return {"pipeline_id": pipeline_id, "version_id": v.pipeline_version_id,
            "version_name": vname, "created": True, "created_pipeline": created_pipeline,
            "digest": digest}


def upload(config: PipelineConfig, spec_file: str, host: Optional[str],
           version: Optional[str] = None) -> Dict[str, Any]:
    """`deblur pipeline upload`: the compiled package as a new version of the KFP pipeline named
    runner.pipeline_name (the UI's Pipelines page lists it and its versions; a run started
    there takes the version's spec and parameter defaults)."""
    _load_spec(spec_file)
    host = _host(config, host)
    package, _, temporary = _package_for(spec_file, config)
    try:
        with _kfp(host) as client:
            r = _upload(client, config, package, version)
    finally:
        if temporary:
            os.unlink(package)
    r.update(host=host, pipeline=config.runner.pipeline_name,
             url=f"{host}/#/pipelines/details/{r['pipeline_id']}/version/{r['version_id']}")
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


def submit(config: PipelineConfig, spec_file: str, host: Optional[str],
           schedule: Optional[str] = None, experiment: Optional[str] = None,
           run_name: Optional[str] = None, params: Optional[Dict[str, str]] = None,
           no_cache: bool = False, pin_version: bool = False,
           version: Optional[str] = None) -> Dict[str, Any]:
    """Registers the package as a pipeline version (or reuses the same one), then creates a run
    of that version, or with a cron `schedule` a recurring run, in `experiment` (created when
    missing), with `params` ({run parameter: value text}, `--param`) over the compiled defaults.

    A run is sent every parameter's value (the compiled defaults with `params` over them). A
    recurring run references the pipeline without a version, so each of its runs takes the
    pipeline's newest version (KFP backend >= 2.5.0; infra/README.md), and only `params`, so
    that the newest version's defaults fill the rest; `pin_version` pins it to this version
    (KFP's API cannot move a recurring run to another version: delete it and submit again).
    `no_cache`: the run parameter cache=off (every task runs again: compiler.add_cache_salt).
    Returns ids and UI links."""
    kf = config.kubeflow
    if schedule is not None:
        schedule = validate_cron(schedule)
    if not kf.pipeline_root:
        raise ConfigError("kubeflow.pipeline_root is not set (gs://BUCKET/pipeline_root)")
    spec = _load_spec(spec_file)
    values = dict(params or {})
    if no_cache:
        if run_params.CACHE not in parameter_types(spec):
            raise ConfigError(f"--no-cache: {spec_file} has no `{run_params.CACHE}` run "
                              f"parameter; compile it again with this version of deblur")
        values[run_params.CACHE] = "off"
    overrides = run_arguments(config, spec, values)  # before any request
    host = _host(config, host)
    experiment = experiment or kf.kfp_experiment
    name = config.runner.pipeline_name
    defaults = compiled_defaults(spec)
    changed = {k: v for k, v in overrides.items() if defaults.get(k) != v}
    package, _, temporary = _package_for(spec_file, config)
    result: Dict[str, Any] = {"host": host, "experiment": experiment,
                              "pipeline_root": kf.pipeline_root}
    try:
        with _kfp(host) as client:
            ver = _upload(client, config, package, version)
            result["pipeline_version"] = ver
            exp = client.create_experiment(name=experiment)
            result["experiment_id"] = exp.experiment_id
            if schedule:
                result["parameters"] = overrides
                result.update(_create_schedule(
                    client, config, exp.experiment_id, ver, schedule, overrides, pin_version,
                    run_name or default_run_name(
                        name, ver["version_name"] if pin_version else "(newest version)",
                        changed) + f" {schedule}"))
                result["url"] = f"{host}/#/recurringrun/details/{result['id']}"
            else:
                result["parameters"] = {**defaults, **overrides}
                run = client.run_pipeline(
                    experiment_id=exp.experiment_id,
                    job_name=run_name or default_run_name(name, ver["version_name"], changed),
                    params=result["parameters"], pipeline_id=ver["pipeline_id"],
                    version_id=ver["version_id"], pipeline_root=kf.pipeline_root,
                    service_account=kf.service_account)
                result.update(kind="run", id=run.run_id, name=run.display_name,
                              url=f"{host}/#/runs/details/{run.run_id}")
    finally:
        if temporary:
            os.unlink(package)
    return result


def _create_schedule(client, config: PipelineConfig, experiment_id: str, ver: Dict[str, Any],
                     schedule: str, params: Dict[str, Any], pin_version: bool,
                     name: str) -> Dict[str, Any]:
    import kfp_server_api

    kf = config.kubeflow
    body = kfp_server_api.V2beta1RecurringRun(
        experiment_id=experiment_id, display_name=name,
        description=f"scheduled retraining of {config.runner.pipeline_name}"
                    + (f", version {ver['version_name']}" if pin_version
                       else ", the pipeline's newest version at each run"),
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
    experiment = experiment or config.kubeflow.kfp_experiment
    out: Dict[str, Any] = {"host": host, "action": action, "experiment": experiment}
    with _kfp(host) as client:
        if action == "list":
            experiment_id = None
            if not all_experiments:
                experiment_id = _experiment_id(client, experiment)
                if experiment_id is None:
                    out["schedules"] = []
                    return out
            rows, token = [], ""
            while True:
                r = client.list_recurring_runs(page_token=token, page_size=100,
                                               experiment_id=experiment_id,
                                               sort_by="created_at desc")
                rows += r.recurring_runs or []
                token = r.next_page_token or ""
                if not token:
                    break
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


def _experiment_id(client, name: str) -> Optional[str]:
    r = client.list_experiments(page_size=2, filter=json.dumps({"predicates": [{
        "operation": "EQUALS", "key": "display_name", "stringValue": name}]}))
    exps = r.experiments or []
    return exps[0].experiment_id if exps else None


def _schedule_row(client, rr) -> Dict[str, Any]:
    ref = rr.pipeline_version_reference
    trigger = rr.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else None
    every = (trigger.periodic_schedule.interval_second
             if trigger and trigger.periodic_schedule else None)
    version = None
    if ref is not None and ref.pipeline_version_id:
        try:
            version = client.get_pipeline_version(ref.pipeline_id,
                                                  ref.pipeline_version_id).display_name
        except Exception:  # noqa: BLE001 - a deleted version: show its id
            version = ref.pipeline_version_id
    return {"id": rr.recurring_run_id, "name": rr.display_name,
            "status": rr.status, "mode": rr.mode,
            "schedule": cron or (f"every {every} s" if every else None),
            "version": version if version else (
                "the pipeline's newest" if ref is not None and ref.pipeline_id
                else "inline spec (frozen at creation)"),
            "parameters": dict((rr.runtime_config.parameters or {})
                               if rr.runtime_config else {})}
