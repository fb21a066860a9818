"""`deblur synth-data` and `deblur ingest`: data in (core/synth.py, the Beam ingest)."""
from __future__ import annotations

import json
import sys
import time

from deblur.common import EXIT_FAILED, check_writable, size_arg



def cmd_synth_data(args) -> int:
    from core import synth

    t0 = time.time()
    summary = synth.generate(args.out, pairs=args.pairs, size=args.size, seed=args.seed,
                             test_pairs=args.test_pairs, progress=True)
    print(json.dumps(summary, indent=2) if args.json else
          f"in-domain (GoPro layout): {summary['in_domain']['root']}  train {summary['in_domain']['train']}"
          f" / test {summary['in_domain']['test']} pairs\n"
          f"out-of-domain (RealBlur layout): {summary['out_of_domain']['root']}  train "
          f"{summary['out_of_domain']['train']} / test {summary['out_of_domain']['test']} pairs\n"
          f"done in {time.time() - t0:.1f} s")
    return 0


def cmd_ingest(args) -> int:
    beam_args = list(args.beam_args)  # after a lone '--' (deblur/cli.py main)
    from components.ingest import beam_ingest as bi, sources

    subsets = None if args.split in (None, "", "all") else [s for s in args.split.split(",") if s]
    source = sources.IngestSource(layout=args.layout, root=args.root, subsets=subsets,
                                  dataset=args.dataset, domain=args.domain,
                                  blur_kind=args.blur_kind, variant=args.variant,
                                  span_pattern=args.span_pattern)
    options = sources.IngestOptions(max_quarantine_fraction=args.max_quarantine_fraction,
                                    train_crop_size=args.crop_size, span_window=args.span_window)
    if args.workers > 1:
        beam_args = [f"--direct_num_workers={args.workers}",
                     "--direct_running_mode=multi_processing"] + beam_args
    check_writable(args.out, "--out")
    from components.ingest.overwrite import clear_output

    clear_output(args.out, args.overwrite)
    t0 = time.time()
    print(f"listing {args.root} ({args.layout} layout)...", file=sys.stderr)
    try:
        summary = bi.run_ingest([source], args.out, options, beam_args, args.unit_store,
                                progress=lambda line: print(line, file=sys.stderr))
    except bi.IngestError as e:
        print(f"deblur: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"{summary['inputs']} inputs = {summary['written']} written + "
              f"{summary['quarantined']} quarantined in {time.time() - t0:.1f} s -> {args.out}"
              + (f" ({summary['processed']['inputs']} decoded now, "
                 f"{summary['reused']['inputs']} reused)" if summary["reused"]["units"] else ""))
        for split, c in summary["splits"].items():
            print(f"  {split}: {c['written']} examples in {c['num_shards']} shard(s), "
                  f"{c['quarantined']} quarantined")
        for reason, n in summary["quarantine_by_reason"].items():
            print(f"  quarantined {reason}: {n}  (see {summary['quarantine_file']})")
        for line in bi.unlabelled_lines(summary):
            print(f"  {line}")
    return 0


def add_parsers(sub) -> None:
    """synth-data and ingest."""
    s = sub.add_parser("synth-data", help="write the synthetic in- and out-of-domain data sets")
    s.add_argument("out")
    s.add_argument("--pairs", type=int, default=8, help="in-domain training pairs")
    s.add_argument("--test-pairs", type=int, default=None,
                   help="in-domain and out-of-domain test pairs (default max(2, pairs/2))")
    s.add_argument("--size", type=size_arg, default=(256, 256), help="HxW (default 256x256)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")

    from components.ingest.layouts import BLUR_KINDS, DEFAULT_BLUR_KIND, LAYOUTS, REALBLUR_VARIANTS
    s = sub.add_parser("ingest", help="Beam ingest of a paired dataset into sharded TFRecords",
                       epilog="Arguments after a lone '--' go to Beam, e.g. "
                              "-- --runner=DataflowRunner --project=P --region=R "
                              "--temp_location=gs://B/tmp")
    s.add_argument("--layout", required=True, choices=LAYOUTS)
    s.add_argument("--root", required=True, help="dataset root: local path or gs:// URI")
    s.add_argument("--out", required=True, help="output dir (local or gs://)")
    s.add_argument("--split", default=None,
                   help="subset(s) to ingest, comma-separated (train,test,val; reds: val300 = "
                        "frames 9, 19, ..., 99 of every val clip); default every subset with "
                        "pairs (blurry-only subsets such as REDS's test are skipped and counted)")
    s.add_argument("--dataset", default=None, help="dataset name stored in each example")
    s.add_argument("--domain", choices=("in", "out"), default=None,
                   help="default: in for gopro/folder, out for the others")
    s.add_argument("--blur-kind", default=DEFAULT_BLUR_KIND,
                   choices=sorted({k for kinds in BLUR_KINDS.values() for k in kinds}),
                   help="which blurry frames: gopro blur|blur_gamma, reds blur|blur_jpeg "
                        "(the JPEG track); default blur")
    s.add_argument("--variant", default=None, choices=REALBLUR_VARIANTS,
                   help="realblur: RealBlur-J or RealBlur-R (required when the root holds both)")
    s.add_argument("--span-pattern", default=None,
                   help="the root holds one layout per span folder, e.g. 'span-{SPAN}' or "
                        "'{YYYY}-{MM}-{DD}' (TFX's span tokens)")
    s.add_argument("--span-window", type=int, default=0,
                   help="ingest only the latest N spans (default 0: all)")
    s.add_argument("--unit-store", default=None,
                   help="a folder (local or gs://) keeping each ingested source/span under its "
                        "fingerprint: unchanged ones are reused instead of decoded again")
    s.add_argument("--max-quarantine-fraction", type=float, default=0.05)
    s.add_argument("--crop-size", type=int, default=128,
                   help="training crop; smaller images in a train split are quarantined")
    s.add_argument("--workers", type=int, default=1, help="DirectRunner worker processes")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--json", action="store_true")


COMMANDS = {"synth-data": cmd_synth_data, "ingest": cmd_ingest}
