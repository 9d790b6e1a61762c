"""``mimo-audio corpus``: build and inspect the offline TTS speech corpus."""

from __future__ import annotations

import argparse
import json


def _build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from apps.corpus import SIZES, build_corpus, corpus_stats, format_stats

    config = SIZES[args.size]
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.engines:
        config = replace(config, engines=tuple(args.engines.split(",")))
    build_corpus(args.out, config, jobs=args.jobs, progress=not args.no_progress)
    print(format_stats(corpus_stats(args.out)))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from apps.corpus import corpus_stats, format_stats

    stats = corpus_stats(args.dir)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 1 if stats["problems"] else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("corpus", help="build or inspect the offline TTS speech corpus")
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="synthesise the corpus (resumes: files already there are kept)")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--size", choices=("small", "full"), default="small",
                       help="small: ~200 utterances in under a minute; full: ~12 h of audio")
    build.add_argument("--jobs", type=int, default=2, help="parallel synthesis jobs (default 2)")
    build.add_argument("--seed", type=int, default=None, help="seed for the plan and the noise (default 0)")
    build.add_argument("--engines", default=None, help="comma-separated subset of flite,festival,espeak")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)

    stats = sub.add_parser("stats", help="hours, utterances, speakers per split; checks the hold-out rules")
    stats.add_argument("dir", help="corpus directory (with manifest.jsonl)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_stats)
