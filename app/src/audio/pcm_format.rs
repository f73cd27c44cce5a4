//! What a streamed microphone (`natter call --input -`) sends: raw PCM (signed 16-bit
//! little-endian, mono, 48 kHz) or a WAV stream, recognised by its `RIFF…WAVE` header, in
//! whatever a synthesizer writes — 8/16/24/32-bit integer or 32-bit float PCM, any channel
//! count (mixed down to mono), any rate (resampled to 48 kHz by the reader). A streamed WAV's
//! length fields are often 0 or 0xFFFFFFFF (the writer did not know the length): the data
//! chunk is read until the stream ends, whatever it says. Pure: bytes in, samples out.

use std::fmt;

/// How the samples of a stream are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    U8,
    I16,
    I24,
    I32,
    F32,
}

impl Encoding {
    fn bytes(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::I16 => 2,
            Self::I24 => 3,
            Self::I32 | Self::F32 => 4,
        }
    }
}

/// The format of a PCM stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFormat {
    pub rate: u32,
    pub channels: u16,
    pub encoding: Encoding,
}

impl StreamFormat {
    /// Raw PCM on standard input without a header.
    pub const RAW: Self = Self {
        rate: 48_000,
        channels: 1,
        encoding: Encoding::I16,
    };
}

/// Why a WAV header cannot be streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

/// The longest WAV header we wait for before the data chunk (metadata chunks included).
pub const MAX_HEADER: usize = 64 * 1024;

/// Whether `start` (the first 12 bytes or fewer) begins a WAV stream.
pub fn is_wav(start: &[u8]) -> bool {
    start.len() >= 12 && &start[..4] == b"RIFF" && &start[8..12] == b"WAVE"
}

/// Parses a WAV header: `Ok(Some((format, n)))` when `bytes` holds it all up to the start of
/// the data (`n` bytes), `Ok(None)` when more bytes are needed.
pub fn parse_wav_header(bytes: &[u8]) -> Result<Option<(StreamFormat, usize)>, FormatError> {
    let mut pos = 12;
    let mut format = None;
    loop {
        let Some(header) = bytes.get(pos..pos + 8) else {
            return more(pos);
        };
        let id = &header[..4];
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let body = pos + 8;
        if id == b"data" {
            let format = format.ok_or_else(|| {
                FormatError("the WAV stream has no \"fmt \" chunk before its data".into())
            })?;
            return Ok(Some((format, body)));
        }
        // Chunks are padded to an even length.
        let next = body.saturating_add(size).saturating_add(size & 1);
        if id == b"fmt " {
            let Some(fmt) = bytes.get(body..body + size) else {
                return more(next);
            };
            format = Some(parse_fmt(fmt)?);
        } else if next > MAX_HEADER {
            return Err(FormatError(format!(
                "the WAV stream's header is longer than {} KiB before its data",
                MAX_HEADER / 1024
            )));
        }
        pos = next;
    }
}

fn more(needed: usize) -> Result<Option<(StreamFormat, usize)>, FormatError> {
    if needed > MAX_HEADER {
        Err(FormatError(format!(
            "the WAV stream's header is longer than {} KiB before its data",
            MAX_HEADER / 1024
        )))
    } else {
        Ok(None)
    }
}

fn parse_fmt(fmt: &[u8]) -> Result<StreamFormat, FormatError> {
    if fmt.len() < 16 {
        return Err(FormatError(
            "the WAV stream's \"fmt \" chunk is too short".into(),
        ));
    }
    let u16_at = |i: usize| u16::from_le_bytes([fmt[i], fmt[i + 1]]);
    let mut tag = u16_at(0);
    let channels = u16_at(2);
    let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
    let bits = u16_at(14);
    // WAVE_FORMAT_EXTENSIBLE: the real format is the sub-format GUID's first two bytes.
    if tag == 0xfffe && fmt.len() >= 26 {
        tag = u16_at(24);
    }
    let encoding = match (tag, bits) {
        (1, 8) => Encoding::U8,
        (1, 16) => Encoding::I16,
        (1, 24) => Encoding::I24,
        (1, 32) => Encoding::I32,
        (3, 32) => Encoding::F32,
        (1 | 3, _) => {
            return Err(FormatError(format!(
                "{bits}-bit WAV samples are not supported: send 8, 16, 24 or 32-bit PCM or \
                 32-bit float"
            )));
        }
        _ => {
            return Err(FormatError(format!(
                "compressed WAV (format 0x{tag:04x}) is not supported: send PCM or 32-bit float"
            )));
        }
    };
    if channels == 0 || !(8_000..=192_000).contains(&rate) {
        return Err(FormatError(format!(
            "the WAV stream says {channels} channels at {rate} Hz: expected 1 or more channels \
             at 8–192 kHz"
        )));
    }
    Ok(StreamFormat {
        rate,
        channels,
        encoding,
    })
}

/// Turns the stream's bytes into mono samples at its own rate, carrying a partial frame
/// (of all channels) from one read to the next.
#[derive(Debug)]
pub struct Decoder {
    format: StreamFormat,
    carry: Vec<u8>,
}

impl Decoder {
    pub fn new(format: StreamFormat) -> Self {
        Self {
            format,
            carry: Vec::new(),
        }
    }

    /// Decodes `bytes`, appending the samples (channels mixed down to mono) to `out`.
    pub fn decode(&mut self, bytes: &[u8], out: &mut Vec<f32>) {
        let width = self.format.encoding.bytes();
        let frame = width * usize::from(self.format.channels);
        self.carry.extend_from_slice(bytes);
        let whole = self.carry.len() / frame * frame;
        let scale = 1.0 / f32::from(self.format.channels);
        for f in self.carry[..whole].chunks_exact(frame) {
            let sum: f32 = f
                .chunks_exact(width)
                .map(|s| sample(self.format.encoding, s))
                .sum();
            out.push(sum * scale);
        }
        self.carry.drain(..whole);
    }
}

fn sample(encoding: Encoding, b: &[u8]) -> f32 {
    match encoding {
        Encoding::U8 => (f32::from(b[0]) - 128.0) / 128.0,
        Encoding::I16 => f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0,
        Encoding::I24 => (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 8_388_608.0,
        Encoding::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0,
        Encoding::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A streamed WAV header as a synthesizer writes it: lengths unknown (0xFFFFFFFF), a LIST
    /// chunk of metadata before the data.
    fn header(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
        let mut h = b"RIFF\xff\xff\xff\xffWAVE".to_vec();
        h.extend_from_slice(b"fmt \x10\0\0\0");
        h.extend_from_slice(&tag.to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&rate.to_le_bytes());
        let block = channels * bits / 8;
        h.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        h.extend_from_slice(&block.to_le_bytes());
        h.extend_from_slice(&bits.to_le_bytes());
        h.extend_from_slice(b"LIST\x05\0\0\0abcde\0");
        h.extend_from_slice(b"data\xff\xff\xff\xff");
        h
    }

    #[test]
    fn finds_the_format_and_where_the_data_starts_even_in_pieces() {
        let h = header(1, 2, 22_050, 16);
        assert!(is_wav(&h[..12]));
        assert!(!is_wav(b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b"));
        for cut in [12, 20, 30, 44, h.len() - 1] {
            assert_eq!(parse_wav_header(&h[..cut]), Ok(None), "cut at {cut}");
        }
        let (format, start) = parse_wav_header(&h).unwrap().unwrap();
        assert_eq!(start, h.len());
        assert_eq!(
            format,
            StreamFormat {
                rate: 22_050,
                channels: 2,
                encoding: Encoding::I16
            }
        );
    }

    #[test]
    fn names_what_it_cannot_stream() {
        let adpcm = parse_wav_header(&header(0x11, 1, 8_000, 4)).unwrap_err();
        assert!(
            adpcm.to_string().contains("compressed WAV (format 0x0011)"),
            "{adpcm}"
        );
        let bits = parse_wav_header(&header(1, 1, 48_000, 12)).unwrap_err();
        assert!(bits.to_string().contains("12-bit"), "{bits}");
        let mut no_fmt = b"RIFF\0\0\0\0WAVE".to_vec();
        no_fmt.extend_from_slice(b"data\0\0\0\0");
        assert!(parse_wav_header(&no_fmt).is_err());
        let mut huge = b"RIFF\0\0\0\0WAVE".to_vec();
        huge.extend_from_slice(b"JUNK\xff\xff\xff\x7f");
        assert!(parse_wav_header(&huge).is_err(), "a header that never ends");
    }

    #[test]
    fn decodes_every_encoding_and_mixes_channels_down_across_reads() {
        let mut d = Decoder::new(StreamFormat {
            rate: 48_000,
            channels: 2,
            encoding: Encoding::I16,
        });
        let bytes: Vec<u8> = [16_384i16, 0, -32_768, -32_768]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        // Split inside the second frame: it comes out only once whole.
        d.decode(&bytes[..5], &mut out);
        assert_eq!(out, [0.25]);
        d.decode(&bytes[5..], &mut out);
        assert_eq!(out, [0.25, -1.0]);
        let one = |encoding, bytes: &[u8]| {
            let mut out = Vec::new();
            Decoder::new(StreamFormat {
                rate: 48_000,
                channels: 1,
                encoding,
            })
            .decode(bytes, &mut out);
            out
        };
        assert_eq!(one(Encoding::U8, &[0, 128, 192]), [-1.0, 0.0, 0.5]);
        assert_eq!(one(Encoding::I24, &[0, 0, 0x40, 0, 0, 0x80]), [0.5, -1.0]);
        assert_eq!(one(Encoding::I32, &0x4000_0000i32.to_le_bytes()), [0.5]);
        assert_eq!(one(Encoding::F32, &(-0.75f32).to_le_bytes()), [-0.75]);
    }
}
