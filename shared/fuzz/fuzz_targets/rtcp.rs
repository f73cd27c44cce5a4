//! Compound RTCP parsing: never panics; the sender and receiver reports it finds, written back
//! out, parse to the same packets.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natter_proto::fuzz_checks::rtcp(data));
