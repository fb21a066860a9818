"""`deblur`: the command line of the pipeline (SPEC section 9).

User mistakes (bad paths, bad options, a layout that does not match, too much quarantined)
end with one line `deblur: error: ...` on stderr and a non-zero exit code; tracebacks are
reserved for bugs. Heavy libraries (Beam, TensorFlow, TFX) are imported only by the commands
that need them. The commands are in groups (deblur/commands/), each registering its parsers and
handlers; this module parses, dispatches and turns errors into that one line.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence

from deblur.common import EXIT_FAILED, EXIT_TERMINATED, EXIT_USAGE, UserError  # noqa: F401


def _quiet_libraries(verbose: bool) -> None:
    # 3 hides the C++ start-up noise of TensorFlow (CUDA plugin registration on a CPU machine);
    # Python exceptions still surface. --verbose shows everything.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if verbose else "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="apache_beam")
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
        # "Couldn't find python-snappy": Beam then uses crcmod's C extension (5 MB in ~40 ms,
        # measured), which is not a bottleneck next to PNG decoding.
        logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)


def build_parser(commands: Optional[Dict[str, object]] = None) -> argparse.ArgumentParser:
    """The parser of every command; `commands` (if given) receives {name: handler}."""
    from deblur.commands import GROUPS

    p = argparse.ArgumentParser(prog="deblur", description=__doc__.splitlines()[0])
    p.add_argument("--verbose", action="store_true", help="library logs at INFO")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parsers(sub)
        if commands is not None:
            commands.update(group.COMMANDS)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, beam_args = argv[:i], argv[i + 1 :]
    commands: Dict[str, object] = {}
    args = build_parser(commands).parse_args(argv)
    args.beam_args = beam_args
    _quiet_libraries(args.verbose)
    try:
        return commands[args.command](args)
    except (UserError, ValueError, FileNotFoundError) as e:
        # LayoutError and ConfigError are ValueErrors too. --verbose keeps the traceback.
        if args.verbose:
            raise
        print(f"deblur: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        if args.verbose:
            raise
        print(f"deblur: error: {e.filename or ''}: {e.strerror or e}".lstrip(": "),
              file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:
        # The work ran and stopped on its own rule (quarantine bound, data anomalies, a
        # non-finite training step, a lost or missing training worker, SIGTERM).
        names = {c.__name__ for c in type(e).__mro__}
        if not names & {"IngestError", "DataValidationError", "TrainingStopped"} \
                or args.verbose:
            raise
        print(f"deblur: error: {e}", file=sys.stderr)
        return EXIT_TERMINATED if "TrainingTerminated" in names else EXIT_FAILED
    except KeyboardInterrupt:
        print("deblur: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - TensorFlow's file errors, without importing it
        # tf.errors.PermissionDeniedError (an output folder that turned read-only, a gs://
        # bucket without write access) is a user's mistake too: one line
        if type(e).__name__ != "PermissionDeniedError" or args.verbose:
            raise
        text = (getattr(e, "message", None) or str(e)).strip()
        print(f"deblur: error: {text.splitlines()[0] if text else type(e).__name__}",
              file=sys.stderr)
        return EXIT_USAGE
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
