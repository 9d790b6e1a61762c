"""The evaluation CLI: ``list``, ``run``, ``score``, ``report`` (``mimo-audio eval ...`` or ``python -m eval ...``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("mimo-audio.eval")


def _scorer_options(args: argparse.Namespace) -> dict:
    return {"asr": args.asr_scorer, "sim": args.sim_scorer, "judge_url": args.judge_url,
            "judge_model": args.judge_model, "judge_key": args.judge_key}


def cmd_list(args: argparse.Namespace) -> int:
    from eval.data import readers
    from eval.tasks import load_tasks

    tasks = load_tasks(args.tasks_dir)
    rd = readers()
    if args.json:
        print(json.dumps({"tasks": {k: v.to_dict() for k, v in tasks.items()},
                          "readers": {k: {"description": r.description, "layout": r.layout} for k, r in rd.items()}},
                         indent=1, default=str))
        return 0
    print("| task | kind | dataset | split | metrics | official (7B) |\n|---|---|---|---|---|---|")
    for t in tasks.values():
        data = f"{t.dataset}" + (" (suite)" if t.suite else "")
        print(f"| {t.name} | {t.kind} | {data} | {t.split or '-'} | {', '.join(t.metrics)} | {t.official or '-'} |")
    print("\ndata each reader needs under --data-root:")
    for name, r in rd.items():
        print(f"  {name:12s} {r.layout}")
    return 0


def _model(args: argparse.Namespace):
    from eval.models import make_adapter

    return make_adapter(args.model, args.endpoint, tokenizer_path=args.tokenizer, device=args.device,
                        quant=args.quant, sparse=args.sparse, speculative=args.speculative, api_key=args.api_key,
                        voice=args.voice, random_init=args.random_init)


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from eval.runner import run
    from eval.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.suite:
        from eval.suites import suite_tasks

        tasks, roots = suite_tasks(args.suite, out, args.corpus, args.items, args.split)
        if args.tasks:
            wanted = set(args.tasks.split(","))
            tasks = [t for t in tasks if t.name in wanted]
    else:
        if not args.tasks:
            raise ValueError("name --tasks T1,T2 or --suite offline")
        tasks = [get_task(n.strip(), args.tasks_dir).with_split(args.split) for n in args.tasks.split(",") if n]
        if args.data_root is None:
            raise ValueError("--data-root DIR is required (the folder holding the benchmark's files)")
        root = Path(args.data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a directory")
        roots = {t.name: root for t in tasks}
    if not tasks:
        raise ValueError("no task to run")
    from eval.runner import load_samples

    for t in tasks:  # data errors (bad layout, malformed lines) surface before the model loads
        load_samples(t, roots[t.name], args.limit)
    model = _model(args)
    dirs = run(tasks, model, roots, out, limit=args.limit, progress=not args.no_progress, score=not args.no_score,
               scorer_options=_scorer_options(args), retry_errors=args.retry_errors)
    from eval.distributed import rank_world

    if rank_world()[0] == 0 and not args.no_score:
        from eval.report import collect, markdown, report

        paths = report(out)
        mine = {str(d / "report.json") for d in dirs}
        print(markdown([r for r in collect(out) if r["path"] in mine]))
        print(f"\nsamples: {out}/<model>/<task>/samples.jsonl; summary: {paths['markdown']}, {paths['csv']}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from eval.report import markdown, report
    from eval.scoring import Scorers, score_task
    from eval.tasks import TaskSpec

    out = Path(args.out)
    dirs = sorted({p.parent for p in out.glob("**/samples*.jsonl")})
    if args.tasks:
        dirs = [d for d in dirs if d.name in set(args.tasks.split(","))]
    if not dirs:
        raise ValueError(f"no sample records under {out}")
    scorers = Scorers(**_scorer_options(args))
    reports = []
    for d in dirs:
        meta_path = d / "task.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{d}: no task.json (not a task folder written by `eval run`)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))["task"]
        meta["metrics"] = tuple(meta["metrics"])
        reports.append(score_task(d, TaskSpec(**meta), scorers, progress=not args.no_progress))
    report(out)
    print(markdown(reports))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from eval.report import collect, markdown, report

    paths = report(Path(args.out), Path(args.dest) if args.dest else None)
    print(markdown(collect(Path(args.out))))
    print(f"\n{paths['markdown']}\n{paths['csv']}")
    return 0


def _scorer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--asr-scorer", default="pocketsphinx",
                   help="pocketsphinx (offline default), whisper:DIR or paraformer:DIR (local model folders)")
    p.add_argument("--sim-scorer", default="resemblyzer", help="resemblyzer (default) or wavlm:DIR (WavLM SV)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for the LLM judge (off by default)")
    p.add_argument("--judge-model", default="gpt-4o-mini")
    p.add_argument("--judge-key", default=None, help="API key of the judge endpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``list``, ``run``, ``score``, ``report`` to a subparsers object."""
    ls = sub.add_parser("list", help="the tasks (with the data each needs) and dataset readers")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--tasks-dir", type=Path, action="append", help="extra folder of task YAML files")
    ls.set_defaults(func=cmd_list)

    r = sub.add_parser("run", help="run tasks on a model (resumable), then score them",
                       description="Run tasks; each finished sample is appended to OUT/<model>/<task>/samples.jsonl, "
                                   "a rerun skips finished samples. Under torchrun (RANK/WORLD_SIZE) samples are "
                                   "sharded by rank and merged by rank 0.")
    r.add_argument("--tasks", default=None, help="comma-separated task names (`eval list`)")
    r.add_argument("--suite", choices=("offline",), default=None,
                   help="offline: the embedded-model suite on a flite test set and ../shared/data/real_speech")
    r.add_argument("--data-root", default=None, help="folder with the benchmark's files (its own layout)")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--split", default=None, help="override the task's split (e.g. test-other)")
    r.add_argument("--limit", type=int, default=None, help="first N samples of each task")
    r.add_argument("--model", default=None, help="MimoAudio LM folder (default: the embedded model); with "
                                                  "--endpoint: the served model name")
    r.add_argument("--tokenizer", default=None, help="audio tokenizer folder (with --model)")
    r.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL (http://host:port/v1) instead of "
                                                     "a local model")
    r.add_argument("--api-key", default=None)
    r.add_argument("--voice", default=None, help="endpoint voice name")
    r.add_argument("--quant", default=None, help="LUT weight scheme for the backbone, e.g. w4g64")
    r.add_argument("--sparse", default=None, help="sparse attention layout, e.g. hysparse-1:3")
    r.add_argument("--speculative", type=int, default=0, help="MTP draft tokens for text outputs (0: off)")
    r.add_argument("--random-init", action="store_true",
                   help="the same architectures with seeded random weights (the floor a trained model must beat)")
    r.add_argument("--device", default=None)
    r.add_argument("--threads", type=int, default=None, help="torch threads")
    r.add_argument("--corpus", default=None, help="--suite offline: a built corpus instead of the flite set")
    r.add_argument("--items", type=int, default=None, help="--suite offline: items per task (default 8)")
    r.add_argument("--no-score", action="store_true", help="inference only (score later with `eval score`)")
    r.add_argument("--retry-errors", action="store_true", help="rerun samples whose record holds an error")
    r.add_argument("--tasks-dir", type=Path, action="append", help="extra folder of task YAML files")
    _scorer_args(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("score", help="(re)score cached sample records under OUT (no model needed)")
    s.add_argument("out")
    s.add_argument("--tasks", default=None, help="only these task folders")
    _scorer_args(s)
    s.set_defaults(func=cmd_score)

    rp = sub.add_parser("report", help="Markdown + CSV tables across models and tasks from OUT/**/report.json")
    rp.add_argument("out")
    rp.add_argument("--dest", default=None, help="where to write summary.md / summary.csv (default OUT)")
    rp.set_defaults(func=cmd_report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
    sub = parser.add_subparsers(dest="eval_command", metavar="ACTION", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        logging.getLogger("mimo-audio").error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
