"""Argument helpers shared by every verb: sub-commands with examples, model and matcher specs, pairs.

One model-spec syntax everywhere: ``NAME`` or ``NAME:key=value,key=value`` (as `eval hpatches
--model aliked:variant=aliked-n16,max_keypoints=2048`); verbs that take a single model also accept
``--conf key=value ...``, merged into the spec's config (a key given both ways is an error).
"""
from __future__ import annotations

import argparse

# Exit codes of every verb: 0 done; 1 the system refused (disk full, I/O); 2 a usage, config or input error
# (nothing or part done, one line on stderr says what to do); 3 done except some inputs that failed (listed;
# what succeeded is saved); 130 interrupted by Ctrl-C (what was done is saved; rerun the command to resume).
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

# Options taking KEY=VALUE items: `--conf a=1 b=2 IMAGES` must leave IMAGES to the positional argument
# (argparse's nargs="*" would take it); `attach_key_values` rewrites such items as `--conf=a=1 --conf=b=2`.
KEY_VALUE_OPTIONS = ("--conf", "--matcher-conf")


def attach_key_values(argv: list[str]) -> list[str]:
    """argv with each KEY=VALUE item after a KEY_VALUE_OPTIONS flag attached to its own flag; the first
    item without '=' ends the list (it is a positional argument or another option)."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token not in KEY_VALUE_OPTIONS:
            out.append(token)
            continue
        items = []
        while i < len(argv) and "=" in argv[i] and not argv[i].startswith("-"):
            items.append(argv[i])
            i += 1
        out.extend([f"{token}={item}" for item in items] or [token])
    return out


def add_command(subparsers, name: str, help: str, example: str, func) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with an example."""
    parser = subparsers.add_parser(name, help=help, description=help,
                                   epilog=f"example:\n  {example}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def add_model_args(parser, default_model: str = "sift") -> None:
    """--model SPEC | --preset NAME, --conf KEY=VALUE..., --resize-max N (read back with `model_spec`)."""
    from ..presets import EXTRACT

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", default=None, metavar="SPEC",
                       help=f"registered extractor as NAME or NAME:key=value,... (see `localfeat models`; "
                            f"default {default_model})")
    group.add_argument("--preset", default=None, metavar="NAME",
                       help=f"named extractor settings (--conf keys override them): {', '.join(EXTRACT)}")
    parser.set_defaults(default_model=default_model)
    parser.add_argument("--conf", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="model config, e.g. --conf max_keypoints=2048 rootsift=true")
    parser.add_argument("--resize-max", type=int, default=None,
                        help="downscale images so that max(H, W) <= N before extraction (default: the "
                             "model's resize_max, 1600 unless a preset says otherwise; --conf resize_max=none "
                             "for full resolution)")


def _merge_spec(option: str, spec: str, items, extra_option: str) -> tuple[str, dict]:
    from ..config import ConfigError, parse_conf_items, parse_model_spec

    name, conf = parse_model_spec(spec)
    extra = parse_conf_items(items)
    both = sorted(set(conf) & set(extra))
    if both:
        raise ConfigError(f"{option} {spec!r} and {extra_option} both set {both}: give each key once")
    conf.update(extra)
    return name, conf


def model_spec(args) -> tuple[str, dict]:
    """(extractor name, config) from --model SPEC or --preset NAME, then --conf and --resize-max."""
    from ..config import parse_conf_items
    from ..presets import extract_preset

    if getattr(args, "preset", None):
        preset = extract_preset(args.preset)
        name, conf = preset.model, {**preset.conf, **parse_conf_items(args.conf)}
    else:
        name, conf = _merge_spec("--model", args.model or args.default_model, args.conf, "--conf")
    if getattr(args, "resize_max", None) is not None:
        conf["resize_max"] = args.resize_max
    return name, conf


def add_matcher_args(parser, conf_option: str = "--matcher-conf", conf_help: str = "matcher config",
                     preset_option: str = "--match-preset") -> None:
    """--matcher SPEC | PRESET_OPTION NAME and the config option (`--conf` and `--preset` for `match`,
    `--matcher-conf` and `--match-preset` elsewhere); read back with `matcher_spec`."""
    from ..presets import MATCH

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--matcher", default=None, metavar="SPEC",
                       help="registered matcher as NAME or NAME:key=value,... (default nearest_neighbor, or the "
                            "matcher of the extractor's --preset)")
    group.add_argument(preset_option, dest="match_preset", default=None, metavar="NAME",
                       help=f"named matcher settings ({conf_option} keys override them): {', '.join(MATCH)}")
    if conf_option:
        parser.add_argument(conf_option, nargs="*", action="extend", default=None, metavar="KEY=VALUE",
                            help=conf_help)


def matcher_spec(args, conf_attr: str = "matcher_conf") -> tuple[str, dict | None]:
    """(matcher name, config) from --matcher SPEC or the match preset, else the match preset of the
    extractor's --preset, else nearest_neighbor; the config is None when nothing gives one (callers then
    use `presets.default_matcher_conf`, e.g. a ratio test for SIFT)."""
    from ..config import parse_conf_items
    from ..presets import extract_preset, match_preset

    items = getattr(args, conf_attr, None)
    preset = getattr(args, "match_preset", None)
    if preset is None and args.matcher is None and getattr(args, "preset", None):
        preset = extract_preset(args.preset).match
    if preset is not None:
        p = match_preset(preset)
        return p.matcher, {**p.conf, **parse_conf_items(items)}
    spec = args.matcher or "nearest_neighbor"
    option = "--" + conf_attr.replace("_", "-")
    name, conf = _merge_spec("--matcher", spec, items, option)
    if items is None and ":" not in spec:
        return name, None
    return name, conf


def add_pair_args(parser) -> None:
    """--exhaustive | --sequential K | --pairs FILE (read back with `resolve_pairs`)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--exhaustive", action="store_true", help="every pair of images")
    group.add_argument("--sequential", type=int, metavar="K", help="each image with the next K")
    group.add_argument("--pairs", metavar="FILE", help="text file, one `name0 name1` per line")


def resolve_pairs(args, names_from) -> list:
    """The pairs chosen by `add_pair_args`; `names_from()` lists the image names when needed."""
    from ..pairs import exhaustive_pairs, read_pairs, sequential_pairs

    if args.pairs:
        return read_pairs(args.pairs)
    names = names_from()
    if args.sequential:
        return sequential_pairs(names, args.sequential)
    return exhaustive_pairs(names)


def add_engine_args(parser) -> None:
    """--engine local|ray and the Ray engine's settings (read back with `engine_options`)."""
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="where the work runs: this process (local, default) or a Ray cluster (ray: shards "
                             "on actors, merged into the same file; needs pip install 'localfeat[ray]'; "
                             "see docs/scale.md)")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="with --engine ray: join this cluster (HOST:PORT, auto, ray://HOST:10001); "
                             "default: start a Ray on this machine for the run")
    parser.add_argument("--ray-workers", type=int, default=None, metavar="N",
                        help="with --engine ray: number of workers (default: as many as the cluster fits)")
    parser.add_argument("--ray-cpus", type=float, default=1.0, metavar="N",
                        help="with --engine ray: CPUs per worker (default 1)")
    parser.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                        help="with --engine ray: GPUs per worker (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--shard-size", type=int, default=None, metavar="N",
                        help="with --engine ray: images (extract) or pairs (match) per shard (default 32 / 512)")


def engine_options(args, unit: str = "images") -> dict | None:
    """The Ray engine's options from `add_engine_args` (None for --engine local)."""
    if args.engine != "ray":
        return None
    options = {"address": args.ray_address, "workers": args.ray_workers, "num_cpus": args.ray_cpus,
               "num_gpus": args.ray_gpus}
    if args.shard_size is not None:
        options["shard_pairs" if unit == "pairs" else "shard_images"] = args.shard_size
    return options
