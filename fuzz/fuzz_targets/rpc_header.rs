//! The RPC header and answer decoders over any bytes: a header, an answer or a typed
//! error, never a panic; a decoded header re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc_core::proto::{HEADER_LEN, Header, decode_answer};

fuzz_target!(|data: &[u8]| {
    if let Ok((h, body)) = Header::decode(data) {
        assert_eq!(body.len() + HEADER_LEN, data.len());
        let mut again = Vec::new();
        h.write(&mut again);
        assert_eq!(&again[..], &data[..HEADER_LEN]);
    }
    let _ = decode_answer(data);
});
