#!/usr/bin/env python3
"""Scores one call of scripts/bench-call-quality.sh: PESQ-WB of each speech segment the
listener heard against what the talker sent.

    call_quality_score.py talk.json bob.wav alice.json bob.json

talk.json (written by `make_talk`) lists the segments of the talker's input: each one's start
(seconds in the input) and its reference WAV. alice.json/bob.json are the two calls'
`--stats-json`; their `audio_start_unix_us` put the talker's input on the listener's
recording's time axis. Each segment is then found by cross-correlation within 1 s after its
nominal position (the path delay) and scored with PESQ-WB like scripts/pesq_score.py does.
Prints one JSON object: per segment its PESQ and lag, plus the listener's and talker's stats
that explain a score (late, concealed, FEC, buffer delay, bitrate, frame size).

    call_quality_score.py make_talk OUT_DIR A.wav B.wav ORDER GAP_S

writes OUT_DIR/talk.wav (16 kHz: the voices in ORDER, e.g. "ABA", separated by GAP_S of
silence) and OUT_DIR/talk.json.
"""

import json
import sys
from pathlib import Path

import numpy as np
from pesq import pesq
from scipy.io import wavfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pesq_score import RATE, align, read  # noqa: E402


def make_talk(out: Path, a: Path, b: Path, order: str, gap_s: float) -> None:
    voices = {"A": read(a), "B": read(b)}
    gap = np.zeros(int(gap_s * RATE))
    parts, segs, t = [], [], 0.0
    for i, v in enumerate(order):
        x = voices[v]
        ref = out / f"ref{i}.wav"
        wavfile.write(ref, RATE, (x * 32767).astype(np.int16))
        segs.append({"voice": v, "start_s": t, "ref": str(ref)})
        parts += [x, gap]
        t += (len(x) + len(gap)) / RATE
    talk = np.concatenate(parts)
    wavfile.write(out / "talk.wav", RATE, (talk * 32767).astype(np.int16))
    (out / "talk.json").write_text(json.dumps({"segments": segs, "seconds": t}))


def score(talk: Path, heard: Path, alice: Path, bob: Path) -> None:
    segs = json.loads(talk.read_text())["segments"]
    deg = read(heard)
    a, b = json.loads(alice.read_text()), json.loads(bob.read_text())
    # Seconds from the listener's sample 0 to the talker's sample 0.
    offset_s = (a["audio_start_unix_us"] - b["audio_start_unix_us"]) / 1e6
    out = {"segments": []}
    for s in segs:
        ref = read(Path(s["ref"]))
        start = int(round((offset_s + s["start_s"]) * RATE))
        if start < 0 or start >= len(deg):
            out["segments"].append({"voice": s["voice"], "pesq": None, "lag_ms": None})
            continue
        seg, lag = align(ref, deg[start:])
        # A segment that did not arrive at all scores nothing rather than crashing PESQ.
        try:
            p = round(float(pesq(RATE, ref, seg, "wb")), 3)
        except Exception as e:  # pesq raises on silent input
            p, lag = None, None
            print(f"segment {s}: {e}", file=sys.stderr)
        out["segments"].append({"voice": s["voice"], "pesq": p, "lag_ms": lag})
    peers = b["peers"] or [{}]
    pr = peers[0]
    out["listener"] = {k: pr.get(k) for k in (
        "packets_received", "packets_lost", "late", "duplicates", "concealed", "fec_recovered",
        "dred_recovered", "jitter_ms", "jitter_buffer_ms", "jitter_buffer_target_ms", "rebuffers", "accelerated_ms",
        "expanded_ms")}
    # Samples the listener's device found nothing to play (the engine was late): gaps.
    out["listener"]["playback_underruns"] = b.get("playback_underruns")
    out["talker"] = {k: a.get(k) for k in ("bitrate_bps", "frame_ms", "packets_sent")}
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "make_talk":
        make_talk(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5],
                  float(sys.argv[6]))
    else:
        score(*(Path(p) for p in sys.argv[1:5]))
