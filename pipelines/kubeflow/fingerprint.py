"""The DeblurInputFingerprint task of the compiled Kubeflow pipeline: lists the ingest's sources
and writes their fingerprint (components.ingest.beam_ingest.input_fingerprint) as the task's
output parameter, which the DeblurIngest task takes as its `input_fingerprint` input parameter.

KFP's cache key holds input parameter *values* (kubeflow/pipelines backend/src/v2/cacheutils),
so the ingest, and every task downstream of its Examples artifact, is reused from the cache
exactly while the fingerprint is unchanged. The task itself is never cached: it runs in every
run, including each run of a recurring (cron) run and runs started from the KFP UI, whose
parameters are fixed when the schedule or run is created. pipelines/kubeflow/compiler.py adds
the task to the compiled spec:

    python -m pipelines.kubeflow.fingerprint --sources JSON --options JSON [--data-sources JSON]
        --fingerprint-file {{$.outputs.parameters['fingerprint'].output_file}}

--data-sources is the `data_sources` run parameter when the pipeline has one (it replaces the
compiled sources, as in the DeblurIngest task); empty means the compiled sources.

--problems is the DeblurRunCheck task's verdict on the run parameters (pipelines/kubeflow/check.py):
when it is not empty the task prints it, one line, and exits 1 before listing anything, so a
bad value typed in the KFP UI stops the run within a minute. --cache off (the `cache` run
parameter, `deblur submit --no-cache`) appends a fresh nonce to the fingerprint: the ingest's
cache key, and so every task downstream of its Examples, is new, and the run computes
everything again; the ingest compares only the fingerprint itself (its first word).
--cache-salt-file is the task's `cache_salt` output parameter: "" with --cache on (cache keys
stay the same from run to run), that same nonce with --cache off. Every cached task whose cache
key would not otherwise change (ImportSchemaGen: no upstream) takes it as an input parameter
(pipelines/kubeflow/compiler.py add_cache_salt), so cache=off reruns every task.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.kubeflow.fingerprint",
                                description=__doc__.splitlines()[0])
    p.add_argument("--sources", required=True, help="JSON list of IngestSource")
    p.add_argument("--options", required=True, help="JSON of IngestOptions")
    p.add_argument("--data-sources", default="", help="the data_sources run parameter, if any")
    p.add_argument("--fingerprint-file", required=True, help="KFP's output parameter file")
    p.add_argument("--problems", default="", help="DeblurRunCheck's verdict ('' = all good)")
    p.add_argument("--cache", default="on", help="on, or off: salt the fingerprint")
    p.add_argument("--cache-salt-file", default="",
                   help="KFP's output parameter file of cache_salt ('' or the nonce)")
    args = p.parse_args(argv)
    if args.problems.strip():
        print(args.problems.strip().splitlines()[0], file=sys.stderr)
        return 1
    from components.ingest.beam_ingest import plan_ingest
    from components.ingest.sources import IngestOptions, IngestSource
    from pipelines import run_params

    listed = run_params.data_sources_text(args.data_sources) if args.data_sources else args.sources
    sources = [IngestSource.from_json(s) for s in json.loads(listed)]
    plan = plan_ingest(sources, IngestOptions(**json.loads(args.options)))
    fingerprint = plan.fingerprint()
    salt = ""
    if args.cache == "off":  # a cache key no earlier run had (the ingest checks the first word)
        import uuid

        salt = uuid.uuid4().hex
        fingerprint = f"{fingerprint} no-cache {salt}"
    for path, value in ((args.fingerprint_file, fingerprint), (args.cache_salt_file, salt)):
        if not path:
            continue
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(path, "w") as f:
            f.write(value)
    print(f"input fingerprint {fingerprint} of {len(plan.units)} unit(s) "
          f"({len(plan.candidates)} inputs) in {len(sources)} source(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
