//! A live microphone from a pipe: raw PCM (signed 16-bit little-endian, mono, 48 kHz) or a WAV
//! stream (any PCM format, channels and rate) read from standard input, for bots and agents (`natter call --input -`: a speech synthesizer or
//! a voice agent joins a room through a pipe).
//!
//! Producers rarely write in real time: a synthesizer often produces seconds in one burst, and
//! a busy one falls behind now and then. The WAV device's paced thread takes one period at a
//! time from [`Pacer`], so a burst is buffered here (up to [`BUFFER_SECONDS`], after which the
//! reader stops reading and the pipe pushes back on the producer) and goes out at the real-time
//! rate, never at once. Audio that arrives after its time was played as silence and is
//! dropped, so lateness never turns into delay that stays for the rest of the call — unless it
//! is later than [`MAX_DEBT`]: then the producer paused (between utterances) rather than fell
//! behind, and what it writes next plays at once.

use super::pcm_format::{Decoder, StreamFormat, is_wav, parse_wav_header};
use super::resample::StreamResampler;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};

/// How much audio that arrived early is held, seconds (the rest waits in the pipe).
pub const BUFFER_SECONDS: usize = 10;

/// Lateness (in samples at 48 kHz) that is caught up by dropping the late audio: 200 ms. A
/// gap longer than this is a pause in the producer's speech, not lateness.
pub const MAX_DEBT: usize = 48 * 200;

/// The device side of a streamed microphone: one period at a time, on the stream's timeline.
pub struct Pacer {
    ring: rtrb::Consumer<f32>,
    /// Samples played as silence because the stream had not delivered them in time; that
    /// many samples arriving later are late and dropped.
    debt: usize,
    /// Whether the stream has started (no debt before its first sample: a producer that
    /// starts after the call does is not late).
    started: bool,
    ended: Arc<AtomicBool>,
}

impl Pacer {
    /// A pacer reading from `ring`; `ended` is set by the producer once nothing more comes.
    pub fn new(ring: rtrb::Consumer<f32>, ended: Arc<AtomicBool>) -> Self {
        Self {
            ring,
            debt: 0,
            started: false,
            ended,
        }
    }

    /// Fills `out` with the next period: the stream's samples if they are here, silence for
    /// what is missing. Never blocks or allocates (it runs on the device thread).
    pub fn pull(&mut self, out: &mut [f32]) {
        // Late samples first: their time has passed.
        let late = self.debt.min(self.ring.slots());
        if late > 0 {
            let chunk = self.ring.read_chunk(late).expect("late slots are readable");
            chunk.commit_all();
            self.debt -= late;
        }
        let n = out.len().min(self.ring.slots());
        if n > 0 {
            self.started = true;
            let chunk = self.ring.read_chunk(n).expect("n slots are readable");
            let (a, b) = chunk.as_slices();
            out[..a.len()].copy_from_slice(a);
            out[a.len()..n].copy_from_slice(b);
            chunk.commit_all();
        }
        out[n..].fill(0.0);
        if self.started {
            self.debt += out.len() - n;
            if self.debt > MAX_DEBT {
                // A pause, not lateness: what comes next plays when it comes, as at the start.
                self.debt = 0;
                self.started = false;
            }
        }
    }

    /// True once the producer is done and everything it wrote has been played.
    pub fn finished(&self) -> bool {
        self.ended.load(Acquire) && self.ring.is_empty()
    }
}

/// Reads a PCM stream from `source` on its own thread into a [`Pacer`]: raw PCM, or a WAV
/// stream in any PCM format, channel count and rate ([`pcm_format`](super::pcm_format);
/// resampled to 48 kHz here). The header is read before this returns, so a WAV that cannot be
/// streamed is refused at once with what is wrong. The thread ends at the end of the stream
/// (or a read error, which ends the stream the same way).
pub fn pcm_reader(mut source: impl Read + Send + 'static) -> std::io::Result<Pacer> {
    let (format, leftover) = read_header(&mut source)?;
    let mut resampler = match format.rate {
        48_000 => None,
        rate => Some(
            StreamResampler::new(rate, 48_000)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?,
        ),
    };
    let (mut producer, consumer) = rtrb::RingBuffer::new(BUFFER_SECONDS * 48_000);
    let ended = Arc::new(AtomicBool::new(false));
    let done = ended.clone();
    std::thread::Builder::new()
        .name("natter-pcm-in".into())
        .spawn(move || {
            let mut decoder = Decoder::new(format);
            let mut buf = vec![0u8; 4096];
            let mut samples = Vec::with_capacity(4096);
            let mut resampled = Vec::new();
            let mut bytes = leftover;
            loop {
                samples.clear();
                decoder.decode(&bytes, &mut samples);
                let out = match resampler.as_mut() {
                    Some(r) => {
                        r.push(&samples);
                        resampled.resize(r.available(), 0.0);
                        r.pop(&mut resampled);
                        &resampled
                    }
                    None => &samples,
                };
                for &sample in out {
                    // A full buffer: wait for the device to play some (the pipe then fills and
                    // the producer waits too).
                    while producer.push(sample).is_err() {
                        if producer.is_abandoned() {
                            return;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
                let n = match source.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                bytes.clear();
                bytes.extend_from_slice(&buf[..n]);
            }
            // The resampler holds the stream's last few milliseconds: push them out with
            // silence, so the end of the last word is heard.
            if let Some(r) = resampler.as_mut() {
                r.push(&vec![0.0; format.rate as usize / 25]);
                resampled.resize(r.available(), 0.0);
                r.pop(&mut resampled);
                for &sample in &resampled {
                    if producer.push(sample).is_err() {
                        break;
                    }
                }
            }
            done.store(true, Release);
        })?;
    Ok(Pacer::new(consumer, ended))
}

/// Reads the start of the stream: a WAV header (its format, and the bytes read past it), or
/// raw PCM (the bytes read so far are audio).
fn read_header(source: &mut impl Read) -> std::io::Result<(StreamFormat, Vec<u8>)> {
    let mut start = Vec::with_capacity(64);
    read_up_to(source, &mut start, 12)?;
    if !is_wav(&start) {
        return Ok((StreamFormat::RAW, start));
    }
    loop {
        match parse_wav_header(&start) {
            Ok(Some((format, data))) => return Ok((format, start.split_off(data))),
            Ok(None) => {
                let had = start.len();
                if read_up_to(source, &mut start, had + 256)? == had {
                    return Err(invalid("the WAV stream ended inside its header".into()));
                }
            }
            Err(e) => return Err(invalid(e.to_string())),
        }
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Reads until `buf` holds `len` bytes or the stream ends; returns the length reached.
fn read_up_to(source: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> std::io::Result<usize> {
    let mut chunk = [0u8; 256];
    while buf.len() < len {
        let want = (len - buf.len()).min(chunk.len());
        match source.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: usize = 480;

    fn pacer(capacity: usize) -> (rtrb::Producer<f32>, Pacer, Arc<AtomicBool>) {
        let (p, c) = rtrb::RingBuffer::new(capacity);
        let ended = Arc::new(AtomicBool::new(false));
        (p, Pacer::new(c, ended.clone()), ended)
    }

    /// Sample `i` of the producer's timeline, never zero.
    fn sample(i: usize) -> f32 {
        (i % 1000 + 1) as f32 / 1000.0
    }

    #[test]
    fn a_burst_of_two_seconds_goes_out_one_period_at_a_time() {
        let (mut p, mut pacer, _) = pacer(10 * 48_000);
        let mut played = Vec::new();
        let mut out = vec![0.0; PERIOD];
        let mut written = 0;
        // Simulated time in periods: the producer writes 2 s at once every 2 s.
        for period in 0..600 {
            if period % 200 == 0 {
                for i in written..written + 96_000 {
                    p.push(sample(i)).unwrap();
                }
                written += 96_000;
            }
            pacer.pull(&mut out);
            played.extend_from_slice(&out);
        }
        // Six seconds of periods played six seconds of the stream, in order, no gap.
        assert_eq!(played.len(), 288_000);
        assert!(played.iter().enumerate().all(|(i, s)| *s == sample(i)));
        assert_eq!(pacer.debt, 0);
    }

    #[test]
    fn late_audio_plays_as_silence_and_adds_no_delay() {
        let (mut p, mut pacer, _) = pacer(48_000);
        let mut out = vec![0.0; PERIOD];
        let mut timeline = 0;
        let mut push = |p: &mut rtrb::Producer<f32>, n: usize| {
            for i in timeline..timeline + n {
                p.push(sample(i)).unwrap();
            }
            timeline += n;
        };
        // On time for 10 periods.
        push(&mut p, 10 * PERIOD);
        for _ in 0..10 {
            pacer.pull(&mut out);
        }
        // The producer is 3 periods late: they play as silence...
        for _ in 0..3 {
            pacer.pull(&mut out);
            assert!(out.iter().all(|s| *s == 0.0));
        }
        // ...and when the late audio comes with the rest, the late part is dropped: the next
        // period plays what belongs to *now* on the stream's timeline, not 30 ms behind.
        push(&mut p, 10 * PERIOD);
        pacer.pull(&mut out);
        assert_eq!(out[0], sample(13 * PERIOD));
        assert_eq!(out[PERIOD - 1], sample(14 * PERIOD - 1));
    }

    #[test]
    fn a_pause_longer_than_the_debt_limit_is_a_pause() {
        let (mut p, mut pacer, ended) = pacer(48_000);
        let mut out = vec![0.0; PERIOD];
        // Nothing before the producer starts is debt.
        for _ in 0..50 {
            pacer.pull(&mut out);
        }
        p.push(0.5).unwrap();
        pacer.pull(&mut out);
        assert_eq!(out[0], 0.5, "the first sample plays at once");
        // A second of silence from the producer, then an utterance: it plays at once.
        for _ in 0..100 {
            pacer.pull(&mut out);
        }
        for _ in 0..PERIOD {
            p.push(0.25).unwrap();
        }
        pacer.pull(&mut out);
        assert!(out.iter().all(|s| *s == 0.25));
        assert!(!pacer.finished());
        ended.store(true, Release);
        assert!(pacer.finished());
    }

    /// Waits until the reader has read the whole stream.
    fn read_all(pacer: &Pacer) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pacer.ended.load(Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// What a synthesizer pipes: a streamed WAV (lengths unknown) of 16-bit stereo at 24 kHz.
    /// It plays at 48 kHz, mono, as long as it was, the tone intact.
    #[test]
    fn a_wav_stream_at_another_rate_plays_resampled_to_48k() {
        let rate = 24_000u32;
        let mut bytes = b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\x01\0\x02\0".to_vec();
        bytes.extend_from_slice(&rate.to_le_bytes());
        bytes.extend_from_slice(&(rate * 4).to_le_bytes());
        bytes.extend_from_slice(b"\x04\0\x10\0data\xff\xff\xff\xff");
        let tone = |i: usize| (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 24_000.0).sin();
        for i in 0..rate as usize {
            let s = (tone(i) * 16_384.0) as i16;
            // Left carries the tone, right is silent: mono is half of it.
            bytes.extend_from_slice(&s.to_le_bytes());
            bytes.extend_from_slice(&0i16.to_le_bytes());
        }
        let mut pacer = pcm_reader(std::io::Cursor::new(bytes)).unwrap();
        read_all(&pacer);
        let mut played = vec![0.0f32; 48_000];
        pacer.pull(&mut played);
        let peak = played[10_000..40_000]
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.25).abs() < 0.01, "peak {peak}");
        // 440 Hz at 48 kHz: 880 zero crossings a second, 550 in these 30 000 samples.
        let crossings = played[10_000..40_000]
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!((545..=555).contains(&crossings), "{crossings} crossings");
    }

    #[test]
    fn a_wav_stream_that_cannot_be_streamed_is_refused_with_the_reason() {
        let mut bytes = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x11\0\x01\0".to_vec();
        bytes.extend_from_slice(&[0; 12]);
        let Err(e) = pcm_reader(std::io::Cursor::new(bytes)) else {
            panic!("an ADPCM stream was accepted");
        };
        assert!(e.to_string().contains("compressed WAV"), "{e}");
        let Err(e) = pcm_reader(std::io::Cursor::new(b"RIFF\0\0\0\0WAVEfmt ".to_vec())) else {
            panic!("a cut header was accepted");
        };
        assert!(e.to_string().contains("ended inside its header"), "{e}");
    }

    #[test]
    fn the_reader_turns_little_endian_pcm_into_samples_and_ends_with_the_stream() {
        // 1.5 samples in the first read would split one; a cursor reads it all at once, so
        // feed bytes through a reader that returns 3 at a time.
        struct Trickle(Vec<u8>, usize);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = 3.min(self.0.len() - self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let samples: [i16; 4] = [0, 16384, -32768, 32767];
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut pacer = pcm_reader(Trickle(bytes, 0)).unwrap();
        read_all(&pacer);
        let mut out = [1.0f32; 6];
        pacer.pull(&mut out);
        assert_eq!(out, [0.0, 0.5, -1.0, 32767.0 / 32768.0, 0.0, 0.0]);
        assert!(pacer.finished());
    }
}
