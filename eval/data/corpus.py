"""The project's offline corpus (``mimo-audio corpus build``, format in :mod:`mimo_audio.corpus`).

Options: ``select`` = ``rows`` (one sample per utterance: ASR, resynthesis), ``sentences`` (one per sentence:
TTS) or ``vc`` (few-shot conversion from a trained voice into a held-out voice, from parallel readings);
``voices`` = ``seen`` / ``unseen`` / ``all`` (voice seen in training); ``engine`` (e.g. ``flite``); ``style``
(default ``plain``); ``items`` (how many, spread round-robin over speakers in a seeded order); ``seed``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

from eval.data.base import DatasetReader, Sample
from mimo_audio.corpus import split_rows


def spread(rows: Sequence[dict], n: int | None, rng: np.random.Generator, key: str = "speaker_id") -> list[dict]:
    """Up to ``n`` rows, round-robin over the values of ``key`` in a seeded order (few items still cover
    several voices), each group's rows in a seeded order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        groups[r[key]].append(r)
    order = sorted(groups)
    order = [order[i] for i in rng.permutation(len(order))]
    queues = [[groups[g][i] for i in rng.permutation(len(groups[g]))] for g in order]
    out: list[dict] = []
    limit = len(rows) if n is None else n
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


class OfflineCorpus(DatasetReader):
    name = "corpus"
    description = "the project's offline TTS-engine corpus (test/valid split; trained vs held-out voices)"
    layout = "DIR/manifest.jsonl + wavs (mimo-audio corpus build, or the suite's flite set)"

    def _sample(self, r: dict, **kw) -> Sample:
        audio, err = self.audio_path(r["path"], self.root, f"{self.root}/manifest.jsonl row {r['id']}")
        meta = {"speaker": r["speaker_id"], "engine": r.get("engine"), "seen_voice": r.get("voice_seen_in_train"),
                "duration_s": r.get("duration_s")}
        return Sample(id=r["id"], audio=audio, reference=r["text"], meta=meta, error=err, **kw)

    def samples(self) -> Iterator[Sample]:
        opts = self.options
        rows = split_rows(self.root, self.split or "test", opts.get("style", "plain"))
        voices = opts.get("voices", "all")
        if voices != "all":
            rows = [r for r in rows if bool(r.get("voice_seen_in_train")) == (voices == "seen")]
        if opts.get("engine"):
            rows = [r for r in rows if r.get("engine") == opts["engine"]]
        rng = np.random.default_rng([int(opts.get("seed", 0)), sum(map(ord, opts.get("select", "rows")))])
        items = opts.get("items")
        select = opts.get("select", "rows")
        if select == "rows":
            for r in spread(rows, items, rng):
                yield self._sample(r)
        elif select == "sentences":
            texts = {r["text_id"]: r["text"] for r in rows}
            panel = {}  # each trained voice's first reading: "which trained voice does the output sound like"
            for r in sorted(rows, key=lambda r: r["id"]):
                if r.get("voice_seen_in_train") and r["speaker_id"] not in panel:
                    path, err = self.audio_path(r["path"], self.root, f"row {r['id']}")
                    if err is None:
                        panel[r["speaker_id"]] = path
            order = sorted(texts)
            for i in rng.permutation(len(order))[: items or len(order)]:
                yield Sample(id=order[i], text=texts[order[i]], reference=texts[order[i]], meta={"panel": panel})
        elif select == "vc":
            yield from self._vc(rows, items, rng)
        else:
            raise ValueError(f"corpus: unknown select {select!r} (rows, sentences or vc)")

    def _vc(self, rows: list[dict], n: int | None, rng: np.random.Generator) -> Iterator[Sample]:
        """Query: a trained voice reading s; one example pair: that voice and the held-out target reading s';
        speaker reference: the target reading another sentence; ground truth: the target reading s."""
        at = {(r["speaker_id"], r["text_id"]): r for r in rows}
        texts_of: dict[str, list[str]] = defaultdict(list)
        for spk, tid in sorted(at):
            texts_of[spk].append(tid)
        sources = sorted({r["speaker_id"] for r in rows if r["voice_seen_in_train"]})
        targets = sorted({r["speaker_id"] for r in rows if not r["voice_seen_in_train"]})
        cands = []
        for t in targets:
            for s in texts_of[t]:
                for a in sources:
                    shared = [x for x in texts_of[t] if x != s and (a, x) in at]
                    if (a, s) in at and shared:
                        cands.append({"speaker_id": t, "id": f"{t}|{s}|{a}", "s": s, "a": a, "shared": shared})
        if not cands:
            raise ValueError(f"{self.root}: no held-out voice with two sentences also read by a trained voice")
        for c in spread(cands, n, rng):
            t, s, a = c["speaker_id"], c["s"], c["a"]
            s1 = c["shared"][int(rng.integers(len(c["shared"])))]
            others = [x for x in texts_of[t] if x not in (s, s1)] or [s1]
            s2 = others[int(rng.integers(len(others)))]
            q, ex_in, ex_out, ref, truth = at[(a, s)], at[(a, s1)], at[(t, s1)], at[(t, s2)], at[(t, s)]
            smp = self._sample(q)
            paths = [self.audio_path(r["path"], self.root, f"row {r['id']}") for r in (ex_in, ex_out, ref, truth)]
            smp.id = c["id"]
            smp.examples = [{"input": paths[0][0], "output": paths[1][0], "output_text": ex_out["text"]}]
            smp.speaker_ref, smp.source_ref = paths[2][0], smp.audio
            smp.meta.update({"target": t, "truth": paths[3][0]})
            smp.error = smp.error or next((e for _, e in paths if e), None)
            yield smp
