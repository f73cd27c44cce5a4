//! The control stream decoder fed in arbitrary chunks. The first input byte seeds the chunk
//! sizes, the rest is the stream. Whatever the split, `FrameDecoder` must give exactly what it
//! gives when handed the whole stream at once, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natter_proto::fuzz_checks::control_stream(data));
