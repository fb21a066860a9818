"""A loopback fake of the KFP v2beta1 REST API, for the tests of `deblur pipeline upload`,
`deblur submit`, `deblur schedule` (pipelines/kubeflow/kubeflow_test.py) and `deblur runs`
(pipelines/kubeflow/runs_test.py).

It answers the endpoints kfp's Client calls (paths from kfp_server_api's generated API
classes): healthz; experiments list/create; pipelines create, list, get; pipeline versions upload
(multipart, as PipelineUploadService sends it), list, get, delete; runs create, list, get, terminate
(POST /runs/{id}:terminate), retry (POST /runs/{id}:retry); recurring runs create, list, get,
enable, disable, delete.

Runs do not run by themselves: a created run stays PENDING, and a test scripts its progress
with `script_run(run_id, [(state, {task: state or task fields}), ...])`, one step per GET of
the run (the last step stays), so that following a run does not depend on timing
(`script_next_run` scripts the run the next POST /runs creates). States are V2beta1RuntimeState
values and every scripted answer is checked against the V2beta1Run model.
`scheduled_run(recurring_run_id)` makes the run a recurring run would have started (the fake
has no scheduler), `add_run(**fields)` any run. Terminate turns a PENDING, RUNNING or PAUSED
run CANCELING and refuses any other
(400, as the API server's RunStore.TerminateRun); retry turns a FAILED or CANCELED run
RUNNING and refuses any other (400; the server's checks and message may differ). Times
(created_at, a task's start and end) come from a clock that moves one second per reading, so
runs created later are newer.

The list endpoints read their query string as the API server's list options do (kubeflow/
pipelines backend/src/apiserver: list/list.go, filter/filter.go, the models' field maps):
`filter` is a v2beta1 Filter's JSON whose predicate keys must be API fields of the listed
resource (`display_name`, `created_at`, ...: LIST_FIELDS; `displayName` is refused), with a
known operation and a value of the kind it takes; `sort_by` is "field", "field asc" or
"field desc" on one of those fields; `page_size` must not be negative (0 = 20, at most 200);
`page_token` must be one this server issued (it carries the filter and the order, as the
server's token does). Anything else is answered 400 with the server's message and recorded in
`errors`. Results are filtered, sorted and paged accordingly.

Every request body is checked against the kfp_server_api model of its endpoint
(V2beta1Experiment, V2beta1Pipeline, V2beta1Run, V2beta1RecurringRun), recursively: a key that
is not a field of the model (its attribute_map), a value of the wrong JSON type, or an enum
value outside the model's allowable_values is answered 400 and recorded in `errors`, which
the `kfp_server` fixture asserts empty at teardown. An uploaded package must parse as a KFP
PipelineSpec (its first YAML document, strictly: unknown fields refused) and, when present,
a PlatformSpec. A run or recurring run that names a pipeline version must name one that
exists, and its runtime parameters must be root inputs of that version's spec, as the API
server checks; a run that sends a spec inline is recorded as such (`inline`).

What it does not model: authentication and namespaces (multi-user KFP), the scheduling itself
(a recurring run here starts a run only through `scheduled_run`), running a run (see
`script_run`), the backend's own validation of the pipeline spec beyond the proto parse.
"""
from __future__ import annotations

import email.parser
import http.server
import itertools
import datetime
import json
import threading
import urllib.parse
from typing import Any, Dict, List, Optional

import yaml

BASE = "/apis/v2beta1"


class BodyError(ValueError):
    pass


def _models():
    import kfp_server_api

    return kfp_server_api.models


def check_model(model: str, value: Any, path: str = "") -> None:
    """`value` (parsed JSON) is a valid instance of kfp_server_api model `model`."""
    cls = getattr(_models(), model)
    allowable = getattr(cls, "allowable_values", None)
    if allowable is not None and not cls.openapi_types:  # an enum
        if value not in allowable:
            raise BodyError(f"{path or model}: {value!r} is not one of {allowable}")
        return
    if not isinstance(value, dict):
        raise BodyError(f"{path or model}: expected an object ({model}), got "
                        f"{type(value).__name__}")
    fields = {v: k for k, v in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in fields:
            raise BodyError(f"{path}.{key}".lstrip(".") + f": not a field of {model} "
                            f"(fields: {', '.join(sorted(fields))})")
        check_type(cls.openapi_types[fields[key]], v, f"{path}.{key}".lstrip("."))


def check_type(t: str, v: Any, path: str) -> None:
    if v is None:
        return
    if t.startswith("list["):
        if not isinstance(v, list):
            raise BodyError(f"{path}: expected a list, got {type(v).__name__}")
        for i, x in enumerate(v):
            check_type(t[5:-1], x, f"{path}[{i}]")
        return
    if t.startswith("dict("):
        if not isinstance(v, dict):
            raise BodyError(f"{path}: expected an object, got {type(v).__name__}")
        inner = t[5:-1].split(",", 1)[1].strip()
        for k, x in v.items():
            check_type(inner, x, f"{path}.{k}")
        return
    if t == "object":
        return
    if t in ("str", "datetime", "date"):
        # int64 fields are strings in the OpenAPI models; grpc-gateway also takes numbers
        if not isinstance(v, str) and not (isinstance(v, int) and not isinstance(v, bool)):
            raise BodyError(f"{path}: expected a string, got {type(v).__name__}")
        return
    if t == "bool":
        if not isinstance(v, bool):
            raise BodyError(f"{path}: expected a boolean, got {type(v).__name__}")
        return
    if t in ("int", "float"):
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise BodyError(f"{path}: expected a number, got {type(v).__name__}")
        return
    check_model(t, v, path)


def check_package(data: bytes) -> Dict[str, Any]:
    """The uploaded package's documents as the API server stores them: the pipeline spec, and
    the platform spec when there is one (both parsed strictly as KFP's protos)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = [d for d in yaml.safe_load_all(data.decode("utf-8")) if d is not None]
    if not docs:
        raise BodyError("the uploaded file holds no YAML document")
    try:
        json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())
        if len(docs) > 1:
            json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    except json_format.ParseError as e:
        raise BodyError(f"the uploaded package is not a KFP pipeline spec: {e}") from None
    if len(docs) > 2:
        raise BodyError("more than a pipeline spec and a platform spec")
    return {"pipeline_spec": docs[0], "platform_spec": docs[1] if len(docs) > 1 else None}


class FakeKFP(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: List[Dict[str, Any]] = []
        self.errors: List[str] = []
        self.experiments: Dict[str, Dict[str, Any]] = {}
        self.pipelines: Dict[str, Dict[str, Any]] = {}
        self.versions: Dict[str, Dict[str, Any]] = {}  # version id -> version (+ "_spec")
        self.runs: Dict[str, Dict[str, Any]] = {}
        self.recurring_runs: Dict[str, Dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.seconds = itertools.count(0)  # the fake's clock: one second per reading
        self.scripts: Dict[str, List[Any]] = {}  # run id -> steps left (script_run)
        self.next_script: Optional[List[Any]] = None  # script_next_run
        self.page_tokens: Dict[str, Dict[str, Any]] = {}  # next_page_token -> its list options
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, method, path):
        return [r["body"] for r in self.requests if (r["method"], r["path"]) == (method, path)]

    def calls(self):
        return [(r["method"], r["path"]) for r in self.requests]

    def version_spec(self, version_id: str) -> Dict[str, Any]:
        return self.versions[version_id]["_spec"]

    def now(self) -> str:
        """The fake's clock, RFC 3339 as the API answers: one second later at each reading."""
        return (datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
                + datetime.timedelta(seconds=next(self.seconds))).strftime("%Y-%m-%dT%H:%M:%SZ")

    def script_run(self, run_id: str, steps) -> None:
        """The run's progress: each GET of the run takes the next (run state, {task display
        name: state, or a dict of V2beta1PipelineTaskDetail fields}) step; the last one stays.
        Task times and the run's finished_at are filled in as the states change."""
        if run_id is not None and run_id not in self.runs:
            raise KeyError(run_id)
        for state, tasks in steps:
            check_model("V2beta1RuntimeState", state, "script state")
            for name, task in tasks.items():
                check_model("V2beta1PipelineTaskDetail",
                            task if isinstance(task, dict) else {"state": task}, name)
        if run_id is None:
            self.next_script = list(steps)
        else:
            self.scripts[run_id] = list(steps)

    def script_next_run(self, steps) -> None:
        """script_run for the run the next POST /runs creates (`deblur submit --wait`)."""
        self.script_run(None, steps)

    def add_run(self, **fields) -> str:
        """A run stored as POST /runs stores it, from V2beta1Run fields (no pipeline version
        needed: e.g. a runtime_config with a local pipeline_root); returns its id."""
        run = {"run_id": f"run-{next(self.ids)}", "storage_state": "AVAILABLE",
               "state": "PENDING", "created_at": self.now(), **fields}
        check_model("V2beta1Run", run)
        self.runs[run["run_id"]] = run
        if self.next_script is not None:
            self.scripts[run["run_id"]], self.next_script = self.next_script, None
        return run["run_id"]

    def scheduled_run(self, recurring_run_id: str, display_name: Optional[str] = None) -> str:
        """The run that the recurring run would start now (its experiment, version reference
        and runtime config); returns its id."""
        rr = self.recurring_runs[recurring_run_id]
        return self.add_run(
            experiment_id=rr.get("experiment_id"), recurring_run_id=recurring_run_id,
            display_name=display_name or f"{rr.get('display_name')}-{next(self.ids)}",
            pipeline_version_reference=rr.get("pipeline_version_reference"),
            runtime_config=rr.get("runtime_config"))

    def advance(self, run_id: str) -> Dict[str, Any]:
        """The run as a GET answers it: its scripted next step, if any, applied first."""
        run = self.runs[run_id]
        steps = self.scripts.get(run_id)
        if steps:
            state, tasks = steps.pop(0) if len(steps) > 1 else steps[0]
            self._apply(run, state, tasks)
        return run

    def _apply(self, run: Dict[str, Any], state: str, tasks: Dict[str, Any]) -> None:
        done = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
        details = {t["display_name"]: t for t in
                   (run.get("run_details") or {}).get("task_details") or []}
        for name, task in tasks.items():
            fields = dict(task) if isinstance(task, dict) else {"state": task}
            t = details.get(name)
            if t is None:
                t = details[name] = {"run_id": run["run_id"], "display_name": name,
                                     "task_id": f"task-{next(self.ids)}",
                                     "create_time": self.now()}
            if fields.get("state") != t.get("state"):
                if fields.get("state") not in (None, "PENDING") and "start_time" not in t:
                    t["start_time"] = self.now()
                if fields.get("state") in done:
                    t["end_time"] = self.now()
            t.update(fields)
        run["run_details"] = {"task_details": list(details.values())}
        if state != run.get("state") and state in done:
            run["finished_at"] = self.now()
        run["state"] = state
        check_model("V2beta1Run", run)


# ---- list query strings, as the API server's list options read them ---------------------------
# The API names each listed resource takes in `filter` keys and `sort_by` (the server's
# APIToModelFieldMap of the resource's model, kubeflow/pipelines backend/src/apiserver/model;
# v1beta1 spellings the server still maps are kept: id, name). `display_name`, not
# `displayName`: the keys are the proto field names.
LIST_FIELDS = {
    "experiments": ("experiment_id", "id", "display_name", "name", "created_at",
                    "last_run_created_at", "description", "namespace", "storage_state"),
    "pipelines": ("pipeline_id", "id", "display_name", "name", "created_at", "description",
                  "namespace"),
    "pipeline_versions": ("pipeline_version_id", "id", "display_name", "name", "created_at",
                          "status", "description", "pipeline_spec"),
    "recurring_runs": ("recurring_run_id", "id", "display_name", "name", "created_at",
                       "updated_at", "description", "pipeline_name", "pipeline_version_id",
                       "pipeline_id"),
    # runAPIToModelFieldMap (model/run.go); pipeline_version_id is in the 2.x map only
    "runs": ("run_id", "id", "display_name", "name", "created_at", "finished_at", "description",
             "scheduled_at", "storage_state", "status", "namespace", "experiment_id", "state",
             "state_history", "runtime_details", "recurring_run_id", "pipeline_version_id",
             "pipeline_id"),
}
LISTABLE = {"experiments": "Experiment", "pipelines": "Pipeline",
            "pipeline_versions": "PipelineVersion", "recurring_runs": "Job", "runs": "Run"}
# the v1beta1/v2beta1 name of a field -> the key of this fake's stored objects
_STORED = {"id": None, "name": "display_name"}
OPERATIONS = ("EQUALS", "NOT_EQUALS", "GREATER_THAN", "GREATER_THAN_EQUALS", "LESS_THAN",
              "LESS_THAN_EQUALS", "IN", "IS_SUBSTRING")
_VALUE_KEYS = {"intValue": "int_value", "longValue": "long_value", "stringValue": "string_value",
               "timestampValue": "timestamp_value", "intValues": "int_values",
               "longValues": "long_values", "stringValues": "string_values"}
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 20, 200


class ListError(ValueError):
    """What the API server answers 400 (InvalidInputError) on a list request."""


def _invalid(message: str) -> ListError:
    return ListError(f"Invalid input error: {message}")


def parse_filter(encoded: str, resource: str) -> List[Dict[str, Any]]:
    """The predicates of a `filter` query parameter: JSON of a v2beta1 Filter (proto JSON: a
    field's proto name or its lowerCamel JSON name; unknown fields refused), each key a field
    of the listed resource."""
    def bad(why):
        return _invalid(f"failed to parse valid filter from {encoded!r}: {why}")

    try:
        f = json.loads(encoded)
    except ValueError as e:
        raise bad(e) from None
    if not isinstance(f, dict) or set(f) - {"predicates"}:
        raise bad(f"unknown field(s) {sorted(set(f) - {'predicates'}) if isinstance(f, dict) else f!r} in Filter")
    preds = f.get("predicates") or []
    if not isinstance(preds, list):
        raise bad("predicates: expected a list")
    out = []
    for p in preds:
        if not isinstance(p, dict):
            raise bad("a predicate must be an object")
        values = {_VALUE_KEYS.get(k, k): v for k, v in p.items() if k not in ("key", "operation")}
        unknown = sorted(set(values) - set(_VALUE_KEYS.values()))
        if unknown:
            raise bad(f"unknown field(s) {unknown} in Predicate")
        if len(values) > 1:
            raise bad("a predicate takes one value")
        op = p.get("operation", "OPERATION_UNSPECIFIED")
        if isinstance(op, int) and not isinstance(op, bool) and 1 <= op <= len(OPERATIONS):
            op = OPERATIONS[op - 1]
        if op not in OPERATIONS:
            raise _invalid(f"invalid predicate operation: {op}")
        (vkey, value), = values.items() if values else ((None, None),)
        plural = vkey is not None and vkey.endswith("_values")
        if op == "IN" and not plural:
            raise _invalid(f"cannot use IN operator with scalar type {vkey}")
        if op != "IN" and plural:
            raise _invalid(f"cannot use scalar operator {op} on array type {vkey}")
        if op == "IS_SUBSTRING" and vkey != "string_value":
            raise _invalid(f"cannot use non string value type {vkey} with operator {op}")
        key = p.get("key") or ""
        if not key:
            raise _invalid(f"Predicate key cannot be empty for operation {op} and value {value}")
        if key not in LIST_FIELDS[resource]:
            raise _invalid(f"no support for filtering on unrecognized field {key!r}")
        if plural and isinstance(value, dict):
            value = value.get("values") or []
        out.append({"key": key, "operation": op, "value": value})
    return out


def parse_sort_by(sort_by: str, resource: str):
    """(field, descending) of `sort_by`: "field", "field asc" or "field desc" (case ignored),
    the field one of the resource's; empty: created_at ascending, the server's default."""
    words = sort_by.lower().split()
    if len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
        raise _invalid(f"Received invalid sort by format {sort_by!r}. Supported format: "
                       f'"field_name", "field_name desc", or "field_name asc"')
    if not words:
        return "created_at", False
    if words[0] not in LIST_FIELDS[resource]:
        raise _invalid(f"Invalid sorting field: {words[0]!r} on listable type "
                       f"{LISTABLE[resource]}")
    return words[0], len(words) == 2 and words[1] == "desc"


def _stored_key(resource: str, field: str) -> str:
    ids = {"experiments": "experiment_id", "pipelines": "pipeline_id",
           "pipeline_versions": "pipeline_version_id", "recurring_runs": "recurring_run_id",
           "runs": "run_id"}
    if field == "id":
        return ids[resource]
    return _STORED.get(field) or field


def _matches(obj: Dict[str, Any], resource: str, pred: Dict[str, Any]) -> bool:
    have = obj.get(_stored_key(resource, pred["key"]))
    v, op = pred["value"], pred["operation"]
    if op == "EQUALS":
        return have == v
    if op == "NOT_EQUALS":
        return have != v
    if op == "IN":
        return have in (v or [])
    if op == "IS_SUBSTRING":
        return have is not None and str(v) in str(have)
    if have is None:
        return False
    return {"GREATER_THAN": have > v, "GREATER_THAN_EQUALS": have >= v,
            "LESS_THAN": have < v, "LESS_THAN_EQUALS": have <= v}[op]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code, message):
        return self._reply(code, {"error": message, "message": message,
                                  "code": {400: 3, 404: 5, 409: 6}.get(code, 2)})

    @staticmethod
    def _public(obj):
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _list(self, srv, query, resource: str, items: List[Dict[str, Any]], out_key: str):
        """A list endpoint's answer, its query string read as the API server reads it:
        page_size (negative refused, 0 = 20, at most 200), page_token (one this server
        issued, which then carries the filter and order), sort_by, filter."""
        def one(name):
            values = query.get(name) or [""]
            return values[-1]

        size_text = one("page_size") or "0"
        try:
            size = int(size_text)
        except ValueError:
            raise _invalid(f"page_size {size_text!r} is not a number") from None
        if size < 0:
            raise _invalid(f"The page size should be greater than 0. Got {size}")
        size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        token = one("page_token")
        if token:
            opts = srv.page_tokens.get(token)
            if opts is None or opts["resource"] != resource:
                raise ListError("Invalid input error: Invalid package token")
        else:
            field, desc = parse_sort_by(one("sort_by"), resource)
            preds = parse_filter(one("filter"), resource) if one("filter") else []
            opts = {"resource": resource, "sort": (field, desc), "predicates": preds,
                    "offset": 0}
        found = [x for x in items if all(_matches(x, resource, p) for p in opts["predicates"])]
        field, desc = opts["sort"]
        key = _stored_key(resource, field)
        found.sort(key=lambda x: (str(x.get(key, "")), x.get(_stored_key(resource, "id"), "")),
                   reverse=desc)
        start = opts["offset"]
        page = found[start:start + size]
        out: Dict[str, Any] = {}
        if page:
            out[out_key] = page
            out["total_size"] = len(found)
        if start + size < len(found):
            nxt = f"token-{next(srv.ids)}"
            srv.page_tokens[nxt] = {**opts, "offset": start + size}
            out["next_page_token"] = nxt
        return self._reply(200, out)

    def _handle(self, method):
        srv: FakeKFP = self.server
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        ctype = self.headers.get("Content-Type") or ""
        body = None
        if raw and ctype.startswith("application/json"):
            body = json.loads(raw)
        record = {"method": method, "path": url.path, "query": query, "body": body,
                  "authorization": self.headers.get("Authorization")}
        srv.requests.append(record)
        try:
            return self._route(srv, method, url.path, query, body, raw, ctype, record)
        except (BodyError, ListError) as e:
            srv.errors.append(f"{method} {url.path}: {e}")
            return self._error(400, str(e))

    def _route(self, srv, method, path, query, body, raw, ctype, record):
        if not path.startswith(BASE):
            return self._error(404, f"no {method} {path}")
        p = path[len(BASE):]
        if (method, p) == ("GET", "/healthz"):
            return self._reply(200, {"multi_user": False})
        # ---- experiments
        if (method, p) == ("GET", "/experiments"):
            return self._list(srv, query, "experiments", list(srv.experiments.values()),
                              "experiments")
        if (method, p) == ("POST", "/experiments"):
            check_model("V2beta1Experiment", body)
            exp = {"experiment_id": f"exp-{next(srv.ids)}", "display_name": body["display_name"],
                   "storage_state": "AVAILABLE"}
            srv.experiments[exp["experiment_id"]] = exp
            return self._reply(200, exp)
        # ---- pipelines and versions
        if (method, p) == ("POST", "/pipelines"):
            check_model("V2beta1Pipeline", body)
            if any(x["display_name"] == body.get("display_name")
                   for x in srv.pipelines.values()):
                return self._error(409, f"pipeline {body.get('display_name')} already exists")
            pipe = {"pipeline_id": f"pipe-{next(srv.ids)}", "display_name": body["display_name"],
                    "description": body.get("description", ""),
                    "created_at": srv.now()}
            srv.pipelines[pipe["pipeline_id"]] = pipe
            return self._reply(200, pipe)
        if (method, p) == ("GET", "/pipelines"):
            return self._list(srv, query, "pipelines", list(srv.pipelines.values()),
                              "pipelines")
        if (method, p) == ("POST", "/pipelines/upload_version"):
            pid = (query.get("pipelineid") or [""])[0]
            vname = (query.get("name") or [""])[0]
            if pid not in srv.pipelines:
                return self._error(404, f"pipeline {pid!r} not found")
            if not vname:
                raise BodyError("upload_version without a name")
            if any(v["pipeline_id"] == pid and v["display_name"] == vname
                   for v in srv.versions.values()):
                return self._error(409, f"pipeline version {vname} already exists")
            record["file"] = self._upload_file(raw, ctype)
            docs = check_package(record["file"])
            ver = {"pipeline_id": pid, "pipeline_version_id": f"ver-{next(srv.ids)}",
                   "display_name": vname,
                   "description": (query.get("description") or [""])[0],
                   "created_at": srv.now(),
                   "pipeline_spec": (docs if docs["platform_spec"] else docs["pipeline_spec"]),
                   "_spec": docs["pipeline_spec"]}
            srv.versions[ver["pipeline_version_id"]] = ver
            return self._reply(200, self._public(ver))
        parts = p.strip("/").split("/")
        if method == "GET" and len(parts) == 2 and parts[0] == "pipelines":
            pipe = srv.pipelines.get(parts[1])
            return self._reply(200, pipe) if pipe else self._error(404, f"no pipeline {parts[1]}")
        if method == "GET" and len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions":
            found = [self._public(v) for v in srv.versions.values()
                     if v["pipeline_id"] == parts[1]]
            return self._list(srv, query, "pipeline_versions", found, "pipeline_versions")
        if method in ("GET", "DELETE") and len(parts) == 4 and parts[0] == "pipelines":
            v = srv.versions.get(parts[3])
            if v is None or v["pipeline_id"] != parts[1]:
                return self._error(404, f"no pipeline version {parts[3]}")
            if method == "DELETE":
                del srv.versions[parts[3]]
                return self._reply(200, {})
            return self._reply(200, self._public(v))
        # ---- runs
        if (method, p) == ("POST", "/runs"):
            check_model("V2beta1Run", body)
            self._check_reference(srv, body, record)
            return self._reply(200, srv.runs[srv.add_run(**body)])
        if (method, p) == ("GET", "/runs"):
            exp = (query.get("experiment_id") or [None])[0]
            found = [r for r in srv.runs.values()
                     if exp is None or r.get("experiment_id") == exp]
            return self._list(srv, query, "runs", found, "runs")
        if len(parts) == 2 and parts[0] == "runs":
            rid, _, verb = parts[1].partition(":")
            if rid not in srv.runs:
                return self._error(404, f"run {rid} not found")
            if method == "GET" and not verb:
                return self._reply(200, srv.advance(rid))
            run = srv.runs[rid]
            if method == "POST" and verb == "terminate":
                # RunStore.TerminateRun: UPDATE ... WHERE State IN (the four below)
                if run["state"] not in ("PAUSED", "PENDING", "RUNNING",
                                        "RUNTIME_STATE_UNSPECIFIED"):
                    return self._error(400, f"Invalid input error: Failed to terminate a run "
                                            f"{rid}. Row not found")
                srv.scripts.pop(rid, None)
                run["state"] = "CANCELING"
                return self._reply(200, {})
            if method == "POST" and verb == "retry":
                if run["state"] not in ("FAILED", "CANCELED"):
                    return self._error(400, f"Failed to retry run {rid}: run is in "
                                            f"{run['state']} state, not FAILED or CANCELED")
                srv.scripts.pop(rid, None)
                run["state"] = "RUNNING"
                run.pop("finished_at", None)
                return self._reply(200, {})
        # ---- recurring runs
        if (method, p) == ("POST", "/recurringruns"):
            check_model("V2beta1RecurringRun", body)
            self._check_reference(srv, body, record)
            if not (body.get("trigger") or {}).get("cron_schedule") and not (
                    body.get("trigger") or {}).get("periodic_schedule"):
                raise BodyError("a recurring run needs a trigger")
            rr = {**body, "recurring_run_id": f"rr-{next(srv.ids)}",
                  "status": "ENABLED" if body.get("mode") != "DISABLE" else "DISABLED",
                  "created_at": srv.now()}
            srv.recurring_runs[rr["recurring_run_id"]] = rr
            return self._reply(200, rr)
        if (method, p) == ("GET", "/recurringruns"):
            exp = (query.get("experiment_id") or [None])[0]
            found = [r for r in srv.recurring_runs.values()
                     if exp is None or r.get("experiment_id") == exp]
            return self._list(srv, query, "recurring_runs", found, "recurringRuns")
        if len(parts) == 2 and parts[0] == "recurringruns":
            rid, _, verb = parts[1].partition(":")
            rr = srv.recurring_runs.get(rid)
            if rr is None:
                return self._error(404, f"recurring run {rid} not found")
            if method == "GET" and not verb:
                return self._reply(200, rr)
            if method == "DELETE" and not verb:
                del srv.recurring_runs[rid]
                return self._reply(200, {})
            if method == "POST" and verb in ("enable", "disable"):
                rr["status"] = "ENABLED" if verb == "enable" else "DISABLED"
                rr["mode"] = "ENABLE" if verb == "enable" else "DISABLE"
                return self._reply(200, {})
        return self._error(404, f"no {method} {p}")

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    @staticmethod
    def _upload_file(raw: bytes, ctype: str) -> bytes:
        if not ctype.startswith("multipart/form-data"):
            raise BodyError(f"upload: expected multipart/form-data, got {ctype}")
        msg = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
        for part in msg.get_payload():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return part.get_payload(decode=True)
        raise BodyError("upload: no uploadfile part")

    @staticmethod
    def _check_reference(srv, body, record):
        ref = body.get("pipeline_version_reference")
        spec = None
        if ref:
            if ref.get("pipeline_id") not in srv.pipelines:
                raise BodyError(f"pipeline {ref.get('pipeline_id')!r} not found")
            vid = ref.get("pipeline_version_id")
            if vid:
                if vid not in srv.versions or srv.versions[vid]["pipeline_id"] != ref["pipeline_id"]:
                    raise BodyError(f"pipeline version {vid!r} not found")
                spec = srv.versions[vid]["_spec"]
            else:  # "always the newest version" (KFP backend >= 2.5.0): its newest at this time
                versions = [v for v in srv.versions.values()
                            if v["pipeline_id"] == ref["pipeline_id"]]
                if not versions:
                    raise BodyError(f"pipeline {ref['pipeline_id']} has no version")
                spec = versions[-1]["_spec"]
            if body.get("pipeline_spec"):
                raise BodyError("both pipeline_spec and pipeline_version_reference")
            record["inline"] = False
        elif body.get("pipeline_spec"):
            sent = body["pipeline_spec"]
            spec = sent.get("pipeline_spec", sent)
            record["inline"] = True
        else:
            raise BodyError("neither a pipeline version nor a pipeline spec")
        known = set(spec["root"].get("inputDefinitions", {}).get("parameters", {}))
        sent_params = set(((body.get("runtime_config") or {}).get("parameters") or {}))
        unknown = sorted(sent_params - known)
        if unknown:
            raise BodyError(f"runtime parameters {unknown} are not inputs of the pipeline")


def start() -> FakeKFP:
    srv = FakeKFP()
    srv.thread.start()
    return srv


def stop(srv: FakeKFP) -> None:
    srv.shutdown()
    srv.server_close()
