//! Control message bodies: `Message::decode_body` never panics, and every known message it
//! yields encodes (minimally, so never longer than the input) and decodes back to itself, both
//! as a body and as a framed message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::control::{FrameDecoder, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::decode_body(data) else {
        return;
    };
    if matches!(msg, Message::Unknown { .. }) {
        return;
    }
    let mut body = Vec::new();
    msg.encode_body(&mut body);
    assert!(body.len() <= data.len(), "encoding is never longer than the input");
    assert_eq!(Message::decode_body(&body).as_ref(), Ok(&msg));

    let mut dec = FrameDecoder::new();
    dec.push(&msg.to_frame());
    assert_eq!(dec.next_message(), Some(Ok(msg)));
    assert_eq!(dec.next_message(), None);
});
