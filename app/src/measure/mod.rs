//! Honest mouth-to-ear latency measurement.
//!
//! "Latency" numbers in voice apps are usually assembled from parts — frame
//! size, jitter-buffer target, network RTT / 2 — and the parts never include
//! everything: device buffers, resampler delay, codec lookahead, queueing in
//! the audio callback, a jitter buffer that grew and never shrank. The only
//! number a user actually experiences is mouth-to-ear: the time from sound
//! entering A's microphone to the same sound leaving B's speaker. So we
//! measure exactly that, end to end:
//!
//! 1. Play a known signal — short chirps at irregular intervals
//!    ([`chirp_train`]) — *as* A's microphone.
//! 2. Record B's speaker output with sample 0 aligned to the microphone's
//!    sample 0 (same clock, same start), so a lag is the whole path.
//! 3. Find each chirp by normalised cross-correlation with sub-sample
//!    (parabolic) peak interpolation ([`find_lags`]). A 30 ms, 3 kHz-wide
//!    chirp has a correlation peak a fraction of a millisecond wide, so this
//!    resolves well under 0.1 ms, far finer than any frame size.
//! 4. Report the median and spread over all chirps, and how many were found
//!    ([`LatencyStats`]), so losses and jitter-buffer drift are visible
//!    instead of averaged away.
//!
//! Why chirps and not clicks or speech: a swept tone has high energy and a
//! sharp, unambiguous correlation peak, while staying inside the band a voice
//! codec preserves (300 Hz – 3.4 kHz); clicks are mangled by codecs and noise
//! suppression, and speech correlates with itself at pitch periods. Speech is
//! still provided ([`speech_like`]) with a generic [`best_alignment`] search
//! for "B's output contains A's speech" tests, where the point is that the
//! voice pipeline treats the signal as speech.
//!
//! The module is pure: signals in, numbers out. Capturing and playing audio
//! is the caller's business.

mod chirp;
mod detect;
#[cfg(test)]
mod test_util;

pub use chirp::{ChirpTrain, chirp_train, speech_like};
pub use detect::{Lag, LatencyStats, best_alignment, find_lags};
