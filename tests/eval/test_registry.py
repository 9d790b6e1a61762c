"""Task and reader registries, readers on tiny real-format fixtures, MCQ extraction, NaN/empty outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eval.data import get_reader, readers
from eval.mcq import answer_index, extract_choice, strip_thinking
from eval.tasks import get_task, load_tasks, parse_task


def test_every_task_file_loads_and_names_a_known_reader():
    tasks = load_tasks()
    assert {"librispeech_asr", "seedtts_en_tts", "mmau_mcq_think", "offline_mtp"} <= set(tasks)
    known = readers()
    for t in tasks.values():
        assert t.dataset in known, t.name


def test_task_file_errors_name_the_line():
    with pytest.raises(ValueError, match=r"x.yaml:3: unknown kind"):
        parse_task("dataset: jsonl\nmetrics: [wer]\nkind: dance\n", "x.yaml")
    with pytest.raises(ValueError, match=r"x.yaml:2"):
        parse_task("dataset: jsonl\nkind: asr: bad\nmetrics: [wer]\n", "x.yaml")


def test_librispeech_and_seedtts_readers(librispeech, seedtts):
    s = list(get_reader("librispeech")(librispeech, "test-clean").samples())
    assert len(s) == 6 and s[0].id == "1089-134686-0000" and s[0].reference.startswith("PLEASE")
    assert Path(s[0].audio).is_file() and s[0].error is None
    t = list(get_reader("seedtts")(seedtts, "en").samples())
    assert [x.id for x in t] == ["u0", "u1", "u2"] and Path(t[0].prompt_audio).is_file()
    (seedtts / "en" / "bad").mkdir(exist_ok=True)
    bad = seedtts / "bad_root"
    (bad / "en").mkdir(parents=True, exist_ok=True)
    (bad / "en" / "meta.lst").write_text("u0|x|../../../outside.wav|hello\nu1|only two\n")
    with pytest.raises(ValueError, match=r"meta.lst:2"):
        list(get_reader("seedtts")(bad, "en").samples())


def test_mcq_reader_and_extraction(mmau):
    s = list(get_reader("mmau")(mmau).samples())
    assert s[0].choices[0] == "a dog is barking" and s[0].meta["category"] == "speech"
    assert answer_index(s[0].answer, s[0].choices) == 0 and answer_index("B", ["cat", "dog"]) == 1
    assert extract_choice("<think>maybe (A)? no</think>The answer is (B).", ["x", "y"]) == 1
    assert extract_choice("I think it is a dog is barking", s[0].choices) == 0
    assert extract_choice("", s[0].choices) is None
    assert strip_thinking("reasoning...</think> C") == "C"


def test_esd_reader_pairs_parallel_readings(tmp_path):
    for spk in ("0013", "0019"):
        for utt in (1, 2, 3):
            sf.write(tmp_path / f"ESD_{spk}_{utt:06d}.wav", np.zeros(1600, np.float32) + 0.1, 16000)
    s = list(get_reader("esd")(tmp_path, None, {"mode": "voice"}).samples())
    assert len(s) == 3 and "0013" in s[0].audio and "0019" in s[0].examples[0]["output"]
    assert "0019" in s[0].speaker_ref and s[0].examples[0]["input"] != s[0].audio


def test_nan_and_empty_outputs_are_scored_as_failures(tmp_path):
    pytest.importorskip("pocketsphinx")
    from eval.scoring import Scorers, score_task

    task = get_task("jsonl_asr")
    d = tmp_path / "t"
    (d / "audio").mkdir(parents=True)
    sf.write(d / "audio" / "n.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    recs = [{"id": "empty", "reference": "hello world", "hypothesis": "", "fingerprint": "f", "gen_hash": "g"},
            {"id": "err", "reference": "hello world", "error": "RuntimeError: boom", "error_kind": "model"}]
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rep = score_task(d, task, Scorers(), progress=False)
    assert rep["metrics"]["wer"] == 1.0 and rep["errors"]["model"] == 1
    tts = get_task("offline_tts")
    (d / "samples.jsonl").write_text(json.dumps({"id": "nan", "reference": "hello world", "audio_rel": "audio/n.wav",
                                                 "audio": str(d / "audio" / "n.wav")}) + "\n")
    rep = score_task(d, tts, Scorers(), progress=False)
    assert rep["metrics"]["wer"] == 1.0 and rep["metrics"]["dnsmos_ovrl"] is None


def test_llm_judge_through_an_openai_compatible_endpoint(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from eval.scoring import Scorers, score_task

    asked = []

    class Judge(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            asked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"choices": [{"message": {"content": "Score: 8\nclose enough"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        d = tmp_path / "qa"
        d.mkdir()
        rec = {"id": "q", "reference": "Paris", "hypothesis": "<think>hmm</think>It is Paris.",
               "input": {"question": "Capital of France?"}}
        (d / "samples.jsonl").write_text(json.dumps(rec) + "\n")
        rep = score_task(d, get_task("spoken_qa_s2t"), Scorers(judge_url=f"http://127.0.0.1:{httpd.server_address[1]}"),
                         progress=False)
    finally:
        httpd.shutdown()
    assert rep["judge"] == 0.8 and rep["scorers"]["judge"].startswith("gpt-4o-mini")
    prompt = asked[0]["messages"][0]["content"]
    assert "It is Paris." in prompt and "hmm" not in prompt  # thinking stripped before judging


def test_esd_release_layout_emotion_pairs_and_transcripts(tmp_path):
    spk = tmp_path / "0011"
    lines = []
    for emo, block in (("Neutral", 0), ("Sad", 3)):
        (spk / emo).mkdir(parents=True)
        for k in (1, 2, 3):
            utt = k + 350 * block
            sf.write(spk / emo / f"0011_{utt:06d}.wav", np.full(1600, 0.1, np.float32), 16000)
            lines.append(f"0011_{utt:06d}\tsentence {k}\t{emo}")
    (spk / "0011.txt").write_text("\n".join(lines) + "\n")
    s = list(get_reader("esd")(tmp_path, None, {"mode": "emotion"}).samples())
    assert len(s) == 3 and "Neutral" in s[0].audio and "/Sad/" in s[0].examples[0]["output"]
    assert s[0].examples[0]["output_text"].startswith("sentence") and s[0].meta["duration_s"] == 0.1
    (spk / "0011.txt").write_text("garbage line without tabs\n")
    with pytest.raises(ValueError, match=r"0011.txt:1"):
        list(get_reader("esd")(tmp_path, None, {"mode": "emotion"}).samples())


def test_speechmmlu_and_instructtts_readers(tmp_path):
    sf.write(tmp_path / "q.wav", np.full(1600, 0.1, np.float32), 16000)
    items = [{"id": f"m{i}", "subject": "math", "question": f"{i} + 1 = ?", "choices": ["1", "2", "3", "4"],
              "answer": "B", "question_audio": "q.wav"} for i in range(3)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    s = list(get_reader("speechmmlu")(tmp_path, None, {"modality": "s2s", "shots": 2}).samples())
    assert len(s) == 3 and s[0].audio.endswith("q.wav") and s[0].question.count("Answer: B") == 2
    assert s[0].meta == {"category": "math", "modality": "s2s"}
    (tmp_path / "en.jsonl").write_text(json.dumps({"id": 7, "text": "Hello.", "APS": "low pitch", "DSD": "calm",
                                                   "RP": "a pirate"}) + "\n")
    t = list(get_reader("instructtts")(tmp_path, "en").samples())
    assert [x.id for x in t] == ["7#APS", "7#DSD", "7#RP"] and t[2].instruction == "a pirate"
    assert [x.id for x in get_reader("instructtts")(tmp_path, "en", {"variant": "DSD"}).samples()] == ["7#DSD"]
