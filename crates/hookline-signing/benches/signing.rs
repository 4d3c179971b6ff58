//! Signing and verifying one webhook, at the sizes events have.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hookline_signing::{Secret, Verifier, sign};
use std::hint::black_box;

fn signing(c: &mut Criterion) {
    let (old, new) = (
        Secret::from_bytes(&[7u8; 32]).unwrap(),
        Secret::from_bytes(&[9u8; 32]).unwrap(),
    );
    let mut group = c.benchmark_group("sign");
    for size in [256usize, 1024, 16 * 1024] {
        let body = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("one secret", size), &body, |b, body| {
            b.iter(|| {
                sign(
                    [&old],
                    black_box("evt_01JD3Z"),
                    1_764_179_015,
                    black_box(body),
                )
            })
        });
        group.bench_with_input(
            BenchmarkId::new("rotation, two secrets", size),
            &body,
            |b, body| {
                b.iter(|| {
                    sign(
                        [&old, &new],
                        black_box("evt_01JD3Z"),
                        1_764_179_015,
                        black_box(body),
                    )
                })
            },
        );
    }
    group.finish();

    let body = vec![b'x'; 1024];
    let header = sign([&old, &new], "evt_01JD3Z", 1_764_179_015, &body);
    let verifier = Verifier::new(vec![new.clone()]);
    c.bench_function("verify 1 KiB, match on the second signature", |b| {
        b.iter(|| {
            verifier.verify(
                black_box("evt_01JD3Z"),
                "1764179015",
                black_box(&header),
                black_box(&body),
                1_764_179_020,
            )
        })
    });
}

criterion_group!(benches, signing);
criterion_main!(benches);
