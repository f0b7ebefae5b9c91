//! posix-ship requests as a client sends them: any bytes, as the argument of any
//! operation, decode to a request or an error (the server answers `BadInput`), never a
//! panic or an allocation past the bytes given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posix_ship::proto::*;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

fn decode<T: DeserializeOwned>(b: &[u8]) {
    let _ = rmp_serde::from_slice::<T>(b);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, b)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => decode::<(Target, bool)>(b),
        1 => decode::<OpenReq>(b),
        2 => decode::<Fh>(b),
        3 => decode::<ReadReq>(b),
        4 => decode::<WriteReq>(b),
        5 => decode::<(Target, u64)>(b),
        6 => decode::<(ByteBuf, u32)>(b),
        7 => decode::<(ByteBuf, ByteBuf)>(b),
        8 => decode::<ReaddirReq>(b),
        9 => decode::<(Target, SetTime, SetTime, bool)>(b),
        10 => decode::<(ByteBuf, i32)>(b),
        _ => decode::<(Fh, bool)>(b),
    }
});
