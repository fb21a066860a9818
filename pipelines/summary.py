"""The main job's printed summary, read back from ML Metadata (not from in-process state), so
it describes what the pipeline actually recorded for its latest run."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Set

from ml_metadata.proto import metadata_store_pb2

from components import metadata_store, validation
from components.evaluator.domain_gap import format_domain_gap
from components.evaluator.evaluate import (EVALUATION_SUMMARY_KEYS, chosen_text, fid_kid_text,
                                           reference_lines)
from components.evaluator.gate import comparison_text, domain_name, format_value
from components.ingest.beam_ingest import unlabelled_lines
from core import artifacts
from core.artifacts import (BLESSING_FILE, EVALUATION_FILE, HISTORY_FILE, RESUMED_FILE,
                            SUMMARY_FILE, WARM_START_FILE)


def pipeline_run_names(store) -> List[str]:
    """The names of every pipeline_run context in the store ([] without a store, before the
    first run): taken before a run, they tell which run is this process's own afterwards."""
    return [] if store is None else [c.name for c in store.get_contexts_by_type("pipeline_run")]


def latest_run_artifacts(store, metadata_path: str, pipeline_name: str,
                         run_name: Optional[str] = None) -> Dict[str, List]:
    """{artifact type name: [artifacts]} of the pipeline_run context run_name, or of the
    newest pipeline_run context of the pipeline (metadata_path: for the errors)."""
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_ctx is None:
        raise RuntimeError(f"no run of pipeline {pipeline_name} in {metadata_path}")
    in_pipeline = {a.id for a in store.get_artifacts_by_context(pipeline_ctx.id)}
    runs = [c for c in store.get_contexts_by_type("pipeline_run")
            if any(a.id in in_pipeline for a in store.get_artifacts_by_context(c.id))
            and (run_name is None or c.name == run_name)]
    if not runs:
        raise RuntimeError(f"no run {run_name or ''} of pipeline {pipeline_name} in "
                           f"{metadata_path}".replace("run  of", "run of"))
    run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    types = {t.id: t.name for t in store.get_artifact_types()}
    out: Dict[str, List] = {}
    for a in store.get_artifacts_by_context(run.id):
        if a.id in in_pipeline:
            out.setdefault(types[a.type_id], []).append(a)
    for arts in out.values():  # newest last: a run's context also holds the older artifacts
        arts.sort(key=lambda a: a.id)  # it resolved (the baseline model and its blessing)
    out["_run"] = [run]
    return out


def run_executions(store, run_name: str) -> Dict[str, str]:
    """{node id: state of its execution in the pipeline run}: COMPLETE (it ran), CACHED (an
    earlier run's outputs were reused), FAILED, CANCELED, ... Resolver nodes are left out."""
    run = next((c for c in store.get_contexts_by_type("pipeline_run") if c.name == run_name), None)
    if run is None:
        return {}
    node_type = {t.id for t in store.get_context_types() if t.name == "node"}
    out = {}
    for e in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        nodes = [c.name for c in store.get_contexts_by_execution(e.id) if c.type_id in node_type]
        if not nodes or "resolver" in nodes[0].lower():
            continue
        out[nodes[0].split(".", 1)[-1]] = metadata_store_pb2.Execution.State.Name(
            e.last_known_state)
    return out


def _split_names(artifact) -> List[str]:
    return json.loads(artifact.properties["split_names"].string_value)


def build_summary(metadata_path: str, pipeline_name: str, run_name: Optional[str] = None,
                  runs_before: Optional[Set[str]] = None) -> dict:
    """The summary of the pipeline run run_name, or with runs_before (the run names before
    this process started its run) of the newest run not among them, else of the newest run.
    One ML Metadata connection for all of it."""
    store = metadata_store.open_store(metadata_path)
    if store is None:
        raise RuntimeError(f"no run of pipeline {pipeline_name} in {metadata_path}")
    if runs_before is not None and run_name is None:
        ours = [r for r in pipeline_run_names(store) if r not in runs_before]
        run_name = ours[-1] if ours else None
    arts = latest_run_artifacts(store, metadata_path, pipeline_name, run_name)
    summary = {"pipeline_run": arts["_run"][0].name}
    summary["executions"] = run_executions(store, arts["_run"][0].name)
    if "Examples" in arts:
        ex = arts["Examples"][-1]
        summary["examples_uri"] = ex.uri
        summary["ingest"] = artifacts.read_json(os.path.join(ex.uri, SUMMARY_FILE), required=True)
    if "ExampleAnomalies" in arts:
        an = arts["ExampleAnomalies"][-1]
        summary["anomalies"] = validation.anomalies_by_split(an.uri, _split_names(an))
    if "ModelRun" in arts:
        history_path = os.path.join(arts["ModelRun"][-1].uri, HISTORY_FILE)
        if os.path.exists(history_path):
            history = artifacts.read_json(history_path, required=True)
            summary["training"] = {"first": history[0], "last": history[-1]} if history else {}
        warm_path = os.path.join(arts["ModelRun"][-1].uri, WARM_START_FILE)
        if os.path.exists(warm_path):
            summary["warm_start"] = artifacts.read_json(warm_path, required=True)
        resumed_path = os.path.join(arts["ModelRun"][-1].uri, RESUMED_FILE)
        if os.path.exists(resumed_path):  # the training went on from an interrupted run's
            summary["resumed"] = artifacts.read_json(resumed_path, required=True)
    if "Model" in arts:
        summary["model_uri"] = arts["Model"][-1].uri
    if "ModelEvaluation" in arts:
        path = os.path.join(arts["ModelEvaluation"][-1].uri, EVALUATION_FILE)
        if os.path.exists(path):
            ev = artifacts.read_json(path, required=True)
            summary["evaluation"] = {"uri": arts["ModelEvaluation"][-1].uri,
                                     "domains": ev["domains"], "best_setting": ev["best_setting"],
                                     "best": ev["best"], "baseline": ev.get("baseline"),
                                     "fid_kid_note": ev.get("fid_kid_note"),
                                     "domain_gap": ev.get("domain_gap"),
                               **{k: ev.get(k) for k in EVALUATION_SUMMARY_KEYS}}
    if "ModelBlessing" in arts:
        b = arts["ModelBlessing"][-1]
        path = os.path.join(b.uri, BLESSING_FILE)
        summary["blessing"] = artifacts.read_json(path) or {}
        summary["blessing"]["blessed"] = bool(b.custom_properties["blessed"].int_value) \
            if "blessed" in b.custom_properties else summary["blessing"].get("blessed")
    if "PushedModel" in arts:
        p = arts["PushedModel"][-1]
        props = {k: (v.int_value if v.HasField("int_value") else v.string_value)
                 for k, v in p.custom_properties.items()}
        summary["push"] = {k: props.get(k) for k in ("pushed", "pushed_version",
                                                      "pushed_destination", "reason",
                                                      "already_registered")}
    if "deblur.Servability" in arts:  # components/serving/component.py
        path = os.path.join(arts["deblur.Servability"][-1].uri, "servability.json")
        if os.path.exists(path):
            summary["servability"] = artifacts.read_json(path, required=True)
    if "deblur.DomainDrift" in arts:
        summary["drift"] = artifacts.read_json(os.path.join(arts["deblur.DomainDrift"][-1].uri,
                                                            validation.DRIFT_FILE), required=True)
    summary["retraining"] = retraining(summary)
    return summary


def retraining(s: dict) -> dict:
    """What the run did, and why: the new or changed inputs, the cache hits, the warm-start
    parent, and whether a new version was registered."""
    ex = s.get("executions") or {}
    cached = sorted(n for n, state in ex.items() if state == "CACHED")
    ran = sorted(n for n, state in ex.items() if state == "COMPLETE")
    out: Dict = {"cached": cached, "ran": ran}
    ing = s.get("ingest") or {}
    if ex.get("DeblurIngest") == "CACHED":
        out["inputs"] = {"changed": False, "fingerprint": ing.get("fingerprint"),
                         "why": "the inputs' fingerprint is the one of an earlier run: its "
                                "ingest, and everything that depends only on it, was reused"}
    elif ing:
        units = ing.get("units") or []
        out["inputs"] = {
            "changed": True, "fingerprint": ing.get("fingerprint"),
            "processed_inputs": (ing.get("processed") or {}).get("inputs"),
            "reused_inputs": (ing.get("reused") or {}).get("inputs"),
            "units": [{k: u.get(k) for k in ("source", "span", "span_dir", "status", "change",
                                              "inputs", "new_pairs", "changed_pairs",
                                              "removed_pairs", "new_pairs_ids",
                                              "changed_pairs_ids", "removed_pairs_ids")
                       if u.get(k) is not None} for u in units]}
    warm = s.get("warm_start")
    if ex.get("Trainer") == "CACHED":
        out["training"] = "reused (cached): same examples and config as an earlier run"
    elif warm is not None or s.get("resumed"):
        out["training"] = dict(warm or {})
        if s.get("resumed"):
            out["training"]["resumed"] = s["resumed"][-1]
    push = s.get("push") or {}
    if ex.get("RegistryPusher") == "CACHED":
        out["registered"] = {"new_version": None,
                             "why": "the pusher was cached: its model and blessing are an "
                                    "earlier run's, whose push result stands"
                                    + (f" (version {push.get('pushed_version')})"
                                       if push.get("pushed") else "")}
    elif push:
        out["registered"] = {"new_version": int(push["pushed_version"]) if push.get("pushed")
                             else None,
                             "why": "blessed" if push.get("pushed") else push.get("reason")}
    return out


def _format_retraining(r: dict) -> List[str]:
    lines = ["what this run did:"]
    inputs = r.get("inputs")
    if inputs and not inputs["changed"]:
        lines.append(f"  inputs: unchanged (fingerprint {str(inputs['fingerprint'])[:12]}): "
                     "the ingest came from the cache")
    elif inputs:
        changed = [u for u in inputs["units"] if u.get("status") == "ingested"]
        lines.append(f"  inputs: {inputs['processed_inputs']} decoded now, "
                     f"{inputs['reused_inputs']} reused from the unit store")
        for u in inputs["units"]:
            where = u["source"] + (f" span {u['span']} ({u['span_dir']})" if u.get("span_dir")
                                   else "")
            what = u.get("change") or u.get("status")
            counts = ", ".join(f"{u[k]} {k.replace('_pairs', '')}" for k in
                               ("new_pairs", "changed_pairs", "removed_pairs") if u.get(k))
            names = ", ".join(u.get("changed_pairs_ids", []) + u.get("new_pairs_ids", []))[:200]
            if u in changed or what != "unchanged":
                lines.append(f"    {where}: {what}, {u['status']}"
                             + (f" ({counts})" if counts else "") + (f": {names}" if names
                                                                     and what == "changed" else ""))
        unchanged = [u for u in inputs["units"] if u.get("change") == "unchanged"]
        if unchanged:
            lines.append(f"    {len(unchanged)} unit(s) unchanged: reused")
    if r.get("cached"):
        lines.append(f"  cached: {', '.join(r['cached'])}")
    if r.get("ran"):
        lines.append(f"  ran: {', '.join(r['ran'])}")
    t = r.get("training")
    if isinstance(t, str):
        lines.append(f"  training: {t}")
    elif t:
        p = t.get("parent")
        if p:
            start = (f"warm start from {p.get('name')} (its step {t['start_step']}), "
                     f"{t['steps']} more steps to step {t['target_step']}")
        elif t.get("reason"):
            start = f"from random weights ({t.get('reason')})"
        else:
            start = ""
        res = t.get("resumed")
        if res:  # a killed run's training went on from its checkpoint, not from scratch
            lines.append(f"  training: resumed at step {res['step']} from the checkpoint of an "
                         f"interrupted run ({res.get('checkpoint')})"
                         + (f"; that training began as a {start}" if p else
                            f"; that training began {start}" if start else ""))
        else:
            lines.append(f"  training: {start}")
    reg = r.get("registered")
    if reg:
        lines.append(f"  registry: new version {reg['new_version']} ({reg['why']})"
                     if reg["new_version"] else f"  registry: nothing new ({reg['why']})")
    return lines


def format_summary(s: dict) -> str:
    lines = [f"pipeline run {s['pipeline_run']}"]
    ing = s.get("ingest")
    if ing:
        lines.append(f"ingest: {ing['inputs']} inputs = {ing['written']} written + "
                     f"{ing['quarantined']} quarantined "
                     f"({', '.join(f'{k} {v}' for k, v in ing['quarantine_by_reason'].items()) or 'none'})"
                     f" -> {s['examples_uri']}")
        for split, c in ing["splits"].items():
            lines.append(f"  {split:10s} {c['written']:5d} examples in {c['num_shards']} shard(s)")
        lines.extend(f"  {line}" for line in unlabelled_lines(ing))
    if "anomalies" in s:
        bad = {k: v for k, v in s["anomalies"].items() if v}
        lines.append("TFDV validation against schemas/schema.pbtxt: "
                     + ("no anomalies" if not bad else f"ANOMALIES in {', '.join(bad)}"))
        for split, msgs in bad.items():
            lines.extend(f"  {split}: {m}" for m in msgs)
    if "drift" in s:
        lines.append(validation.format_drift(s["drift"]))
    tr = s.get("training")
    if tr:
        first, last = tr["first"], tr["last"]
        start = (s.get("warm_start") or {}).get("start_step") or 0
        steps = f"{last['step']} steps" if not start else \
            f"{last['step'] - start} steps after a warm start at step {start}"
        lines.append(f"training: {steps}; noise loss (L1) {first['loss_dpm']:.4f} -> "
                     f"{last['loss_dpm']:.4f}")
        if (s.get("warm_start") or {}).get("warning"):  # the base model was not found
            lines.append(f"  WARNING: {s['warm_start']['warning']}")
        for k in (2, 4, 8):
            if f"loss_guidance_x{k}" in last:
                lines.append(f"  guidance x{k}: MSE {last[f'loss_guidance_x{k}']:.4f} "
                             f"(identity baseline {last[f'identity_x{k}']:.4f})")
    if "model_uri" in s:
        lines.append(f"model: {s['model_uri']}")
    ev = s.get("evaluation")
    if ev:
        best = (ev.get("best_setting") or {}).get("key")
        lines.append(f"evaluation: {ev['uri']}")
        lines.append(f"  {chosen_text(ev)}")
        for domain, info in sorted(((ev.get("validation") or {}).get("domains") or {}).items()):
            m = info["settings"].get(best) or {}
            lines.append(f"    validation {domain_name(domain):<14} PSNR "
                         f"{format_value(m.get('psnr'), '.2f')}  LPIPS "
                         f"{format_value(m.get('lpips'), '.4f')}   (blurry input: PSNR "
                         f"{info['input']['psnr']:.2f}, LPIPS {info['input']['lpips']:.4f}; "
                         f"{len(info['settings'])} settings compared)")
        lines.append("  test (the verdict): model, blurry input and classical baselines; "
                     "model - it with paired bootstrap intervals, per-image wins")
        for domain, info in sorted(ev["domains"].items()):
            lines.append(f"  {domain_name(domain)} ({', '.join(info.get('splits', []))}):")
            lines.extend(reference_lines(ev, domain, indent="    ", width=20))
            fk = info.get("fid_kid")
            if fk and best in fk["settings"]:
                lines.append(f"    {'':<20}{fid_kid_text(fk['settings'][best])} against "
                             f"{fk['images']} sharp images   (blurry input: "
                             f"{fid_kid_text(fk['input']).strip()})")
        if ev.get("fid_kid_note"):
            lines.append(f"  ({ev['fid_kid_note']})")
        base = ev.get("baseline")
        if base:
            st = base.get("setting") or {}
            cmp = ((base.get("comparison") or {}).get("out") or {}).get("lpips")
            lines.append(f"  previous blessed model (the regression rule's reference, measured "
                         f"now at {st.get('sampler')}-T{st.get('steps')}-n{st.get('max_noise')}): "
                         f"out-of-domain LPIPS "
                         f"{(base.get('best') or {}).get('out', {}).get('lpips', float('nan')):.4f}"
                         + (f"; model - it: {comparison_text(cmp, 'lpips')}" if cmp else "")
                         + f"  <- {base['model']}")
        else:
            lines.append("  previous blessed model: none (the regression rule is skipped)")
        if ev.get("domain_gap"):
            lines.extend(format_domain_gap(ev["domain_gap"], indent="  "))
    b = s.get("blessing")
    if b:
        lines.append(f"blessed: {'YES' if b.get('blessed') else 'NO'} ({b.get('reason', '')})")
        for r in b.get("rules", []):
            v = "" if r.get("value") is None else f" {r['value']:.4f}"
            t = "" if r.get("threshold") is None else f" (threshold {r['threshold']:.4f})"
            verdict = r["verdict"].upper() + ("" if r.get("enforced", True) else "*")
            lines.append(f"  {r['rule']:<15} {verdict:<8}{v}{t}  {r.get('detail', '')}")
            checks = [("input", d, e) for d, e in sorted((r.get("domains") or {}).items())]
            checks += [(name, d, e) for name, ds in sorted((r.get("references") or {}).items())
                       for d, e in sorted(ds.items())]
            for ref, domain, e in checks:
                if "lpips" in e:
                    lp, ps = e["lpips"], e["psnr"]
                    fv = format_value
                    rv = lambda c: c.get("reference", c.get("input"))  # noqa: E731
                    lines.append(f"    {domain_name(domain):<14} {e['verdict'].upper():<5} LPIPS "
                                 f"{fv(lp['value'], '.4f')} ({ref} {fv(rv(lp), '.4f')}, "
                                 f"max {fv(lp['threshold'], '.4f')})  PSNR "
                                 f"{fv(ps['value'], '.2f')} ({ref} {fv(rv(ps), '.2f')}, "
                                 f"min {fv(ps['threshold'], '.2f')})")
    p = s.get("push")
    if p:
        if p.get("pushed"):
            lines.append(f"registered: version {p['pushed_version']} at {p['pushed_destination']}")
        else:
            lines.append(f"not registered: {p.get('reason')}")
    sv = s.get("servability")
    if sv and sv.get("checked"):
        verdict = "passed" if sv.get("passed") else "FAILED"
        lines.append(f"servability of version {sv.get('version')}: {verdict}: {sv.get('reason')}")
        moved = sv.get("alias_moved")
        if moved:
            src = "unset" if moved.get("from") is None else f"version {moved['from']}"
            lines.append(f"alias moved: {moved['alias']}: {src} -> version {moved['to']}")
        elif sv.get("alias_note"):
            lines.append(sv["alias_note"])
    if s.get("retraining"):
        lines.extend(_format_retraining(s["retraining"]))
    if s.get("seconds") is not None:
        minutes, seconds = divmod(round(s["seconds"]), 60)
        lines.append(f"wall time: {minutes} min {seconds:02d} s (the pipeline, set-up excluded)")
    return "\n".join(lines)
