//! QUIC varint decoding: never panics; whatever decodes re-encodes minimally and decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natter_proto::fuzz_checks::varint(data));
