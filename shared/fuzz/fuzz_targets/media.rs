//! Media datagram splitting, as the relay does it for every datagram: `Datagram::parse`, then
//! `sender_ssrc` and `rtp()`. Never panics; a valid RTP datagram rebuilt with `write_rtp` is
//! accepted again with the same header and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natter_proto::fuzz_checks::media(data));
