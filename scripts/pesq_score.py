#!/usr/bin/env python3
"""Scores the jitter-buffer benchmark's outputs with PESQ (ITU-T P.862.2, wideband).

    pesq_score.py REFERENCE.wav OUT_DIR

Reads OUT_DIR/results.tsv (written by `cargo bench --bench jitter`), scores every row's WAV
against REFERENCE.wav (the original speech), and writes OUT_DIR/results-pesq.tsv (the same rows
plus `pesq` and `lag_ms`) and OUT_DIR/results.md (the markdown tables: adaptive and fixed side by
side per cell, mid-call and call start, plus the calibration rows), which it also prints.

Method: outputs are 48 kHz; they and the reference are brought to 16 kHz (scipy's polyphase
resampler, resample_poly) for wideband PESQ. Each output starts with the whole path delay
(network + buffer + codec look-ahead, 50-400 ms) of silence; that constant part is removed
before scoring: the lag of the cross-correlation peak between reference and output (searched
over 0-1 s) is cut from the front, and the output is cut or zero-padded to the reference's
length. PESQ's own per-utterance alignment then handles what the jitter buffer changes during
the file (time-stretching moves the delay by a few ms at a time).
"""

import csv
import sys
from math import gcd
from pathlib import Path

import numpy as np
from pesq import pesq
from scipy.io import wavfile
from scipy.signal import correlate, resample_poly

RATE = 16_000
MAX_LAG_S = 1.0


def read(path: Path) -> np.ndarray:
    rate, x = wavfile.read(path)
    if x.dtype.kind == "i":
        x = x.astype(np.float64) / float(np.iinfo(x.dtype).max + 1)
    else:
        x = x.astype(np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    if rate != RATE:
        g = gcd(rate, RATE)
        x = resample_poly(x, RATE // g, rate // g)
    return x


def align(ref: np.ndarray, deg: np.ndarray) -> tuple[np.ndarray, float]:
    """Removes the constant delay: returns the output shifted to the reference and the lag."""
    max_lag = int(MAX_LAG_S * RATE)
    n = len(ref)
    seg = deg[: n + max_lag]
    c = correlate(seg, ref, mode="full", method="fft")
    # Index n - 1 is lag 0; positive lags are the output being late.
    lags = c[n - 1 : n - 1 + max_lag + 1]
    lag = int(np.argmax(lags))
    out = deg[lag : lag + n]
    if len(out) < n:
        out = np.concatenate([out, np.zeros(n - len(out))])
    return out, lag * 1000.0 / RATE


def fmt(x: str, digits: int = 1) -> str:
    try:
        v = float(x)
    except ValueError:
        return x
    return "–" if v != v else f"{v:.{digits}f}"


def main() -> None:
    ref_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    ref = read(ref_path)
    rows = list(csv.DictReader(open(out_dir / "results.tsv"), delimiter="\t"))
    for r in rows:
        deg, lag = align(ref, read(out_dir / r["wav"]))
        r["pesq"] = f"{pesq(RATE, ref, deg, 'wb'):.2f}"
        r["lag_ms"] = f"{lag:.1f}"
        print(f"  {r['id']:>3} {r['scenario']:6} {r['jitter']:12} {r['loss']:11} {r['buffer']:9} "
              f"PESQ {r['pesq']}", file=sys.stderr)
    fields = list(rows[0].keys())
    with open(out_dir / "results-pesq.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fields, delimiter="\t")
        w.writeheader()
        w.writerows(rows)

    md: list[str] = []
    titles = {
        "steady": "Mid-call (after 60 s of warm-up on the same path)",
        "start": "Call start (the scored speech is the first thing sent)",
    }
    for scenario, title in titles.items():
        pairs: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        for r in rows:
            if r["scenario"] == scenario:
                pairs.setdefault((r["jitter"], r["loss"]), {})[r["buffer"]] = r
        if not pairs:
            continue
        md.append(f"**{title}**")
        md.append("")
        md.append("| jitter | loss (realized %) | delay ms, adaptive: mean / p95 | fixed 60 ms: mean / p95 "
                  "| late % (a / f) | concealed % (a / f) | FEC % (a / f) | DRED % (a) | PESQ adaptive | PESQ fixed | Δ |")
        md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (jitter, loss), b in pairs.items():
            a = b["adaptive"]
            # JITTER_ADAPTIVE_ONLY runs have no fixed buffer.
            f = b.get("fixed60", {k: "nan" for k in a})
            shown = loss if a["nominal_loss_pct"] == "0" else f"{loss} ({fmt(a['realized_loss_pct'])})"
            delta = float(a["pesq"]) - float(f["pesq"])
            md.append(
                f"| {jitter} | {shown} "
                f"| {fmt(a['mean_delay_ms'])} / {fmt(a['p95_delay_ms'])} "
                f"| {fmt(f['mean_delay_ms'])} / {fmt(f['p95_delay_ms'])} "
                f"| {fmt(a['late_pct'])} / {fmt(f['late_pct'])} "
                f"| {fmt(a['concealed_pct'])} / {fmt(f['concealed_pct'])} "
                f"| {fmt(a['fec_pct'])} / {fmt(f['fec_pct'])} "
                f"| {fmt(a.get('dred_pct', 'nan'))} "
                f"| {a['pesq']} | {f['pesq']} | {delta:+.2f} |"
            )
        md.append("")
    md.append("**Calibration** (jitter-free path, random loss; an ideal buffer plays every packet that "
              "arrives, FEC whenever the next packet arrived at all):")
    md.append("")
    md.append("| scenario | loss (realized %) | ideal, FEC | ideal, PLC only "
              "| ideal, FEC, PLC as 5 + 15 ms calls |")
    md.append("|---|---|---:|---:|---:|")
    cal: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        if r["buffer"].startswith("ideal"):
            loss = r["loss"] if r["nominal_loss_pct"] == "0" else f"{r['loss']} ({fmt(r['realized_loss_pct'])})"
            cal.setdefault((r["scenario"], loss), {})[r["buffer"]] = r["pesq"]
    names = {"steady": "mid-call", "start": "call start"}
    for (scenario, loss), v in cal.items():
        md.append(f"| {names.get(scenario, scenario)} | {loss} | {v.get('ideal', '–')} "
                  f"| {v.get('ideal-plc', '–')} | {v.get('ideal-split', '–')} |")
    # Complexity rows: buffer opus-c{C}-s{K}; mean (min-max) over the loss patterns K.
    comp: dict[tuple[str, str], dict[str, list[float]]] = {}
    losses: list[str] = []
    for r in rows:
        if r["buffer"].startswith("opus-c"):
            c = r["buffer"][len("opus-c"):].split("-s")[0]
            if r["loss"] not in losses:
                losses.append(r["loss"])
            comp.setdefault((r["scenario"], c), {}).setdefault(r["loss"], []).append(float(r["pesq"]))
    if comp:
        md.append("")
        md.append("**Encoder complexity** (jitter-free path, our buffer; PESQ, with loss the mean "
                  "(min–max) over the loss patterns of several seeds):")
        md.append("")
        md.append("| scenario | libopus complexity | " + " | ".join(losses) + " |")
        md.append("|---|---|" + "---:|" * len(losses))
        for (scenario, c), v in comp.items():
            cells = []
            for l in losses:
                x = v.get(l, [])
                if not x:
                    cells.append("–")
                elif len(x) == 1:
                    cells.append(f"{x[0]:.2f}")
                else:
                    cells.append(f"{sum(x) / len(x):.2f} ({min(x):.2f}–{max(x):.2f}, n={len(x)})")
            md.append(f"| {names.get(scenario, scenario)} | {c} | " + " | ".join(cells) + " |")
    text = "\n".join(md) + "\n"
    (out_dir / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
