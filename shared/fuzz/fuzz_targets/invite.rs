//! Invite link parsing from arbitrary text: never panics, and a parsed invite printed with
//! `Display` parses back to the same invite (this target found hosts like `]::1` that printed
//! as links to a different relay; hosts are now validated).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natter_proto::fuzz_checks::invite(data));
