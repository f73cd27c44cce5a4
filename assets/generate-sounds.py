#!/usr/bin/env python3
"""Generates the app's join/leave cues (assets/join.wav, assets/leave.wav).

Two short sine notes with soft attack and release, a fifth apart: rising for join, falling
for leave. 48 kHz mono 16-bit, ~0.22 s each (~21 KB). Standard library only:

    python3 assets/generate-sounds.py
"""
import math
import os
import struct
import wave

RATE = 48_000


def note(freq, seconds, amp=0.22):
    n = int(RATE * seconds)
    attack = int(RATE * 0.008)
    out = []
    for i in range(n):
        env = min(1.0, i / attack) * math.exp(-5.0 * i / n)
        # A touch of the octave makes it a bell rather than a beep.
        s = math.sin(2 * math.pi * freq * i / RATE) + 0.25 * math.sin(4 * math.pi * freq * i / RATE)
        out.append(amp * env * s / 1.25)
    return out


def write(path, samples):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(struct.pack("<h", int(max(-1, min(1, s)) * 32767)) for s in samples))


here = os.path.dirname(os.path.abspath(__file__))
write(os.path.join(here, "join.wav"), note(659.25, 0.09) + note(987.77, 0.13))
write(os.path.join(here, "leave.wav"), note(987.77, 0.09) + note(659.25, 0.13))
