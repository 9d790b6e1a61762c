"""``mimo-audio corpus``: build and inspect the offline TTS speech corpus."""

from __future__ import annotations

import argparse
import json
import logging


def _build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from apps.checks import check_output_dir
    from apps.corpus import SIZES, build_corpus, corpus_stats, format_stats

    check_output_dir(args.out)  # before synthesis starts
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


def _score(args: argparse.Namespace) -> int:
    from apps.corpus.quality import format_scores, score_corpus
    from eval.scorers import MissingScorerDependency

    try:
        return _score_and_print(args, score_corpus, format_scores)
    except MissingScorerDependency as exc:
        logging.getLogger("mimo-audio").error("%s", exc)
        return 1


def _score_and_print(args: argparse.Namespace, score_corpus, format_scores) -> int:
    scores = score_corpus(args.dir, split=args.split, styles=args.styles.split(","), audio_root=args.audio_root,
                          limit=args.limit, progress=not args.no_progress, save=args.save)
    print(format_scores(scores))
    if args.conversion_oracle:
        from apps.corpus.quality import conversion_oracle

        check = conversion_oracle(args.dir, split=args.split, progress=not args.no_progress)
        print(f"\nspeaker check (real target audio as a perfect conversion): {check.items} items, "
              f"closer to target on {check.closer_to_target:.1%}, mean similarity to target "
              f"{check.mean_sim_target:.3f} vs to source {check.mean_sim_source:.3f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("corpus", help="build or inspect the offline TTS speech corpus")
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="synthesise the corpus (resumes: files already there are kept)")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--size", choices=("small", "full", "wide"), default="small",
                       help="small: ~200 utterances in under a minute; full: about 14 h of audio; wide: full plus "
                            "13,000 training sentences read once (text variety for ASR and TTS)")
    build.add_argument("--jobs", type=int, default=2, help="parallel synthesis jobs (default 2)")
    build.add_argument("--seed", type=int, default=None, help="seed for the plan and the noise (default 0)")
    build.add_argument("--engines", default=None, help="comma-separated subset of flite,festival,espeak")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)

    stats = sub.add_parser("stats", help="hours, utterances, speakers per split; checks the hold-out rules")
    stats.add_argument("dir", help="corpus directory (with manifest.jsonl)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_stats)

    score = sub.add_parser("score", help="pocketsphinx WER and DNSMOS of a split, by engine (needs the eval extra)")
    score.add_argument("dir", help="corpus directory (with manifest.jsonl)")
    score.add_argument("--split", default="test", choices=("train", "valid", "test"))
    score.add_argument("--styles", default="plain", help="comma-separated styles to score (default: plain)")
    score.add_argument("--audio-root", default=None,
                       help="score these files instead (same relative paths as the corpus, e.g. resynthesised)")
    score.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    score.add_argument("--save", default=None, help="also write per-utterance results to this JSONL file")
    score.add_argument("--conversion-oracle", action="store_true",
                       help="also run the Resemblyzer voice-conversion criterion on the real held-out voices")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=_score)
