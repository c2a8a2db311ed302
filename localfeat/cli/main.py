"""The `localfeat` command: the parser of every verb group, and `main`."""
from __future__ import annotations

import argparse
import logging
import sys

from . import core, dataset, demo, evaluate, exchange, retrieve, sfm, train
from .args import EXIT_INTERRUPTED, attach_key_values

DESCRIPTION = ("The `localfeat` command. Each verb is a thin layer over a Python function. Exit codes: 0 done; "
               "1 the system refused (disk full, I/O); 2 a usage, config or input error; 3 done except some "
               "inputs that failed (listed; the rest is saved); 130 interrupted (what was done is saved: "
               "rerun the command to resume).")

# Verb-group modules in the order their verbs appear in --help; each has `register(sub, groups)`.
VERB_MODULES = (core, exchange, evaluate, dataset, demo, sfm, train, retrieve)


# Verbs with sub-verbs (`localfeat export colmap`); their parser is created where the first sub-verb registers.
VERB_GROUPS = {
    "export": ("export features/matches to other formats", "export_format", "FORMAT"),
    "import": ("import features from other formats", "import_format", "FORMAT"),
    "eval": ("evaluate features (HPatches, poses, invariance sweeps)", "eval_task", "TASK"),
    "dataset": ("build datasets (e.g. training scenes from COLMAP models)", "dataset_verb", "VERB"),
}


class _VerbGroups(dict):
    """verb -> its sub-parsers, created on first use so that --help lists verbs in registration order."""

    def __init__(self, sub):
        super().__init__()
        self.sub = sub

    def __missing__(self, verb):
        help_text, dest, metavar = VERB_GROUPS[verb]
        self[verb] = self.sub.add_parser(verb, help=help_text).add_subparsers(dest=dest, metavar=metavar)
        return self[verb]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localfeat", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = _VerbGroups(sub)
    for module in VERB_MODULES:
        module.register(sub, groups)
    for verb_parser in sub.choices.values():
        _group_examples(verb_parser)
    return parser


def _group_examples(parser: argparse.ArgumentParser) -> None:
    """A verb with sub-verbs (`export`, `eval`, ...): its --help ends with each sub-verb's example."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs or parser.epilog:
        return
    examples = []
    for child in subs[0].choices.values():
        lines = (child.epilog or "").splitlines()
        if lines and lines[0] == "example:":
            examples.append(lines[1])
    if examples:
        parser.epilog = "examples:\n" + "\n".join(examples)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(attach_key_values(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"localfeat: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    from ..config import ConfigError
    from ..engines import EngineError
    from ..hub import WeightsNotFoundError
    from ..io.h5 import StoreError
    from ..io.images import ImageReadError
    from ..pipeline import RunInterrupted
    from ..train.trainer import TrainError

    try:
        return args.func(args) or 0
    except (ConfigError, WeightsNotFoundError, StoreError, ImageReadError, FileNotFoundError, ValueError,
            TrainError, EngineError) as exc:
        print(f"localfeat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        print(f"localfeat {args.command}: interrupted: {exc.report.summary().splitlines()[0]}; what was done is "
              f"saved in {exc.output}: rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"localfeat {args.command}: interrupted; files written so far are complete (written atomically): "
              "rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a full disk, permissions, I/O: the command was right, the system refused
        print(f"localfeat {args.command}: error: {exc}", file=sys.stderr)
        return 1
