//! The stream core's wire: any bytes, split anywhere, through the frame decoder (whole
//! frames and direct reception), the RMA sub-headers and the handshake decoders. Each
//! yields frames, `None` or a typed error; none may panic or allocate past its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use na_stream::auth::{Challenge, decode_hello};
use na_stream::frame::{Decoder, Kind, Next, RmaReq};

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * bytes.len() / 255).min(bytes.len());
    let mut d = Decoder::new(MAX);
    for part in [&bytes[..cut], &bytes[cut..]] {
        d.feed(part);
        // Direct reception of large bulk bodies and whole frames, as the driver takes them.
        loop {
            match d.next(1024) {
                Ok(Some(Next::Direct(s))) => {
                    assert!(s.body.len() + s.prefix.len() <= s.header.len as usize);
                    // The caller would read the rest of the body from the socket: the
                    // stream cannot go on here.
                    if s.rest > 0 {
                        return;
                    }
                }
                Ok(Some(Next::Frame(h, p))) => {
                    assert_eq!(h.len as usize, p.len());
                    assert!(p.len() <= MAX);
                    match h.kind {
                        Kind::GetReq => drop(RmaReq::decode_get(p)),
                        Kind::PutReq => drop(RmaReq::decode_put(p)),
                        Kind::GetCopy | Kind::PutCopy => drop(RmaReq::decode_copy(p)),
                        Kind::Hello => drop(decode_hello(p)),
                        Kind::Challenge => drop(Challenge::decode(p)),
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
