//! Control message bodies: `Message::decode_body` never panics, and every known message it
//! yields encodes (minimally, so never longer than the input) and decodes back to itself, both
//! as a body and as a framed message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natter_proto::fuzz_checks::control_body(data));
