//! Micro-benchmarks of the per-call CPU cost: RPC header codec and rmp input encoding.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use rpc_core::proto::Header;

fn codec(c: &mut Criterion) {
    let h = Header::request(0x1234_5678_9abc_def0, false);
    let mut v = Vec::with_capacity(64);
    c.bench_function("header_encode", |b| {
        b.iter(|| {
            v.clear();
            black_box(&h).write(&mut v);
            black_box(&v);
        })
    });
    let mut msg = Vec::new();
    h.write(&mut msg);
    msg.extend_from_slice(&[0u8; 64]);
    c.bench_function("header_decode", |b| {
        b.iter(|| Header::decode(black_box(&msg)).unwrap())
    });
    c.bench_function("encode_request_sum", |b| {
        b.iter(|| {
            v.clear();
            h.write(&mut v);
            rmp_serde::encode::write(&mut v, black_box(&(17u64, 25u64))).unwrap();
            black_box(&v);
        })
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
