//! Join/leave cues (`assets/*.wav`, compiled in), decoded once into 48 kHz mono samples the
//! engine mixes into the playback ([`crate::engine::EngineCommand::PlaySound`]).

use std::sync::OnceLock;

const JOIN_WAV: &[u8] = include_bytes!("../../../assets/join.wav");
const LEAVE_WAV: &[u8] = include_bytes!("../../../assets/leave.wav");

/// Which cue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cue {
    Join,
    Leave,
}

fn decode(bytes: &[u8]) -> Vec<f32> {
    let Ok(mut reader) = hound::WavReader::new(std::io::Cursor::new(bytes)) else {
        return Vec::new();
    };
    let spec = reader.spec();
    let scale = 1.0 / (1u64 << (spec.bits_per_sample.max(1) - 1)) as f32;
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Int => reader
            .samples::<i32>()
            .filter_map(Result::ok)
            .map(|s| s as f32 * scale)
            .collect(),
        hound::SampleFormat::Float => reader.samples::<f32>().filter_map(Result::ok).collect(),
    };
    crate::audio::resample::resample(&samples, spec.sample_rate, crate::audio::SAMPLE_RATE)
        .unwrap_or_default()
}

/// The cue's samples (48 kHz mono), decoded on first use and kept for the process lifetime.
pub fn samples(cue: Cue) -> &'static [f32] {
    static JOIN: OnceLock<Vec<f32>> = OnceLock::new();
    static LEAVE: OnceLock<Vec<f32>> = OnceLock::new();
    match cue {
        Cue::Join => JOIN.get_or_init(|| decode(JOIN_WAV)),
        Cue::Leave => LEAVE.get_or_init(|| decode(LEAVE_WAV)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_are_short_audible_and_distinct() {
        for cue in [Cue::Join, Cue::Leave] {
            let s = samples(cue);
            let secs = s.len() as f32 / 48_000.0;
            assert!((0.1..0.5).contains(&secs), "{cue:?}: {secs} s");
            let peak = s.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!((0.05..0.5).contains(&peak), "{cue:?}: peak {peak}");
        }
        assert_ne!(samples(Cue::Join), samples(Cue::Leave));
    }
}
