//! RTP parsing: never panics; a parsed packet written back out parses to the same header and
//! payload (CSRCs, unknown extension elements and padding are dropped by design).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natter_proto::fuzz_checks::rtp(data));
