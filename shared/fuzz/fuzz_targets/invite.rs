//! Invite link parsing from arbitrary text: never panics, and a parsed invite printed with
//! `Display` parses back to the same invite (this target found hosts like `]::1` that printed
//! as links to a different relay; hosts are now validated).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::invite::Invite;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for candidate in [text.to_string(), format!("natter://{text}")] {
        let Ok(invite) = candidate.parse::<Invite>() else {
            continue;
        };
        assert!(!invite.host.is_empty());
        assert_ne!(invite.port, 0);
        let printed = invite.to_string();
        let again = printed.parse::<Invite>();
        assert_eq!(again.as_ref(), Ok(&invite), "{candidate:?} printed as {printed:?}");
    }
});
