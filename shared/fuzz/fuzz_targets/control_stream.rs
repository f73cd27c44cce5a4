//! The control stream decoder fed in arbitrary chunks. The first input byte seeds the chunk
//! sizes, the rest is the stream. Whatever the split, `FrameDecoder` must give exactly what it
//! gives when handed the whole stream at once, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::control::{ControlError, FrameDecoder, Message};

/// Drains complete messages; returns false once the decoder reports a (sticky) oversize frame.
fn drain(dec: &mut FrameDecoder, got: &mut Vec<Result<Message, ControlError>>) -> bool {
    while let Some(m) = dec.next_message() {
        let fatal = matches!(m, Err(ControlError::TooLarge(_)));
        got.push(m);
        if fatal {
            return false;
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };

    let mut whole = Vec::new();
    let mut dec = FrameDecoder::new();
    dec.push(stream);
    drain(&mut dec, &mut whole);

    let mut chunked = Vec::new();
    let mut dec = FrameDecoder::new();
    let mut rest = stream;
    let mut state = u32::from(seed) | 1;
    while !rest.is_empty() {
        // xorshift32: deterministic, input-driven chunk sizes from 1 to 16 bytes (0 is allowed
        // too, as an empty push).
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 17) as usize;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        dec.push(chunk);
        if !drain(&mut dec, &mut chunked) {
            break;
        }
    }
    assert_eq!(chunked, whole);
});
