//! QUIC variable-length integers (RFC 9000 §16).
//!
//! The two most significant bits of the first byte give the length (1, 2, 4 or 8 bytes); the
//! remaining bits hold the value in network byte order. We use them for the RTP-over-QUIC flow
//! identifier and for lengths in control messages, so that every length in the protocol has the
//! same, well-known encoding.

use thiserror::Error;

/// Largest value a QUIC varint can carry (2^62 - 1).
pub const MAX: u64 = (1 << 62) - 1;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum VarIntError {
    /// The buffer ended before the varint did.
    #[error("truncated variable-length integer")]
    Truncated,
}

/// Reads a varint from the front of `buf`, returning the value and the number of bytes used.
pub fn decode(buf: &[u8]) -> Result<(u64, usize), VarIntError> {
    let first = *buf.first().ok_or(VarIntError::Truncated)?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len).ok_or(VarIntError::Truncated)?;
    let mut value = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        value = (value << 8) | u64::from(*b);
    }
    Ok((value, len))
}

/// Number of bytes [`encode`] uses for `value`.
pub fn encoded_len(value: u64) -> usize {
    match value {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends `value` as a varint. Values above [`MAX`] are clamped to it: every caller in this
/// crate encodes lengths and identifiers that cannot come near 2^62.
pub fn encode(value: u64, out: &mut Vec<u8>) {
    let value = value.min(MAX);
    match encoded_len(value) {
        1 => out.push(value as u8),
        2 => out.extend_from_slice(&((value as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((value as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 Appendix A.1 sample encodings.
        assert_eq!(
            decode(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]).unwrap(),
            (151_288_809_941_952_652, 8)
        );
        assert_eq!(decode(&[0x9d, 0x7f, 0x3e, 0x7d]).unwrap(), (494_878_333, 4));
        assert_eq!(decode(&[0x7b, 0xbd]).unwrap(), (15_293, 2));
        assert_eq!(decode(&[0x25]).unwrap(), (37, 1));
        assert_eq!(decode(&[0x40, 0x25]).unwrap(), (37, 2));
        assert_eq!(decode(&[]), Err(VarIntError::Truncated));
        assert_eq!(decode(&[0x40]), Err(VarIntError::Truncated));
    }

    proptest! {
        #[test]
        fn round_trip(v in 0..=MAX) {
            let mut buf = Vec::new();
            encode(v, &mut buf);
            prop_assert_eq!(buf.len(), encoded_len(v));
            prop_assert_eq!(decode(&buf).unwrap(), (v, buf.len()));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..10)) {
            let _ = decode(&bytes);
        }
    }
}
