#!/usr/bin/env python3
"""Summarises scripts/bench-call-quality.sh's runs.jsonl as a markdown table.

    call_quality_summary.py runs.jsonl

Per condition: PESQ-WB at the start of the stream (first segment) and mid-call (third
segment, ~23 s in), each as median (min–max) over the runs; the lowest mid-call segment;
the listener's concealed/late/FEC counts and buffer delay, the talker's final bitrate and
frame; mouth-to-ear latency of the chirp probe (median of the runs' medians, and their p95).
"""

import json
import re
import statistics
import sys


def mm(v: list[float], digits: int = 2) -> str:
    v = [x for x in v if x is not None]
    if not v:
        return "–"
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def main() -> None:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    conds: list[str] = []
    for r in rows:
        if r["condition"] not in conds:
            conds.append(r["condition"])
    print("| condition | runs | PESQ start (first 10 s) | PESQ mid-call | lowest mid-call seg. "
          "| realized loss down % | concealed / late / FEC / DRED per run | buffer ms | underrun ms | talker kbit/s, frame ms "
          "| mouth-to-ear ms median (p95) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in conds:
        sp = [r for r in rows if r["condition"] == c and r["kind"] == "speech"]
        lat = [r for r in rows if r["condition"] == c and r["kind"] == "latency"]
        segs = [[s["pesq"] for s in r["score"]["segments"]] for r in sp]
        start = [s[0] for s in segs]
        mid = [s[2] for s in segs if len(s) > 2]
        lowest = [min((x for x in s[1:] if x is not None), default=None) for s in segs]
        loss = [100.0 * r["netem"]["to_client"]["lost"] / max(1, r["netem"]["to_client"]["packets"])
                for r in sp]
        li = [r["score"]["listener"] for r in sp]
        cl = f"{statistics.median([x['concealed'] or 0 for x in li]):.0f} / " \
             f"{statistics.median([x['late'] or 0 for x in li]):.0f} / " \
             f"{statistics.median([x['fec_recovered'] or 0 for x in li]):.0f} / " \
             f"{statistics.median([x.get('dred_recovered') or 0 for x in li]):.0f}"
        buf = mm([x["jitter_buffer_ms"] for x in li], 1)
        gaps = [x.get("playback_underruns") for x in li]
        gaps_s = mm([g / 48.0 for g in gaps if g is not None], 0) if any(g is not None for g in gaps) else "–"
        ta = [r["score"]["talker"] for r in sp]
        kb = ", ".join(sorted({f"{(t['bitrate_bps'] or 0) / 1000:.0f}/{t['frame_ms']:.0f}" for t in ta}))
        meds, p95s = [], []
        for r in lat:
            m = re.search(r"median ([\d.]+) ms \(p5 [\d.]+, p95 ([\d.]+)", r["line"])
            if m:
                meds.append(float(m.group(1)))
                p95s.append(float(m.group(2)))
        lat_s = f"{mm(meds, 1)} ({statistics.median(p95s):.1f})" if meds else "–"
        print(f"| {c} | {len(sp)} | {mm(start)} | {mm(mid)} | {mm(lowest)} | {mm(loss, 1)} | {cl} "
              f"| {buf} | {gaps_s} | {kb} | {lat_s} |")


if __name__ == "__main__":
    main()
