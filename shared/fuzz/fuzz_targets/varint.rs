//! QUIC varint decoding: never panics; whatever decodes re-encodes minimally and decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::varint;

fuzz_target!(|data: &[u8]| {
    if let Ok((value, used)) = varint::decode(data) {
        assert!(matches!(used, 1 | 2 | 4 | 8));
        assert!(used <= data.len());
        assert!(value <= varint::MAX);
        let mut out = Vec::new();
        varint::encode(value, &mut out);
        assert_eq!(out.len(), varint::encoded_len(value));
        assert!(out.len() <= used, "re-encoding is minimal");
        assert_eq!(varint::decode(&out), Ok((value, out.len())));
    }

    // Encoding any u64 (clamped to 2^62 - 1) decodes back to the clamped value.
    if let Some(bytes) = data.get(..8) {
        let n = u64::from_be_bytes(bytes.try_into().unwrap());
        let mut out = Vec::new();
        varint::encode(n, &mut out);
        let clamped = n.min(varint::MAX);
        assert_eq!(varint::decode(&out), Ok((clamped, varint::encoded_len(clamped))));
    }
});
