//! Checking an event's `data` against its built-in type's schema, as ingest does for every
//! event: parse the `data` into a JSON value, then validate it. Measured on each type's
//! example (valid, as nearly every event is) and on one broken event.

use criterion::{Criterion, criterion_group, criterion_main};
use hookline::catalogue::Catalogue;
use std::hint::black_box;

fn validate(c: &mut Criterion) {
    let catalogue = match Catalogue::builtin() {
        Ok(c) => c,
        Err(e) => panic!("the built-in catalogue does not compile: {e}"),
    };
    let examples: Vec<(String, String)> = catalogue
        .types()
        .iter()
        .map(|t| (t.name.clone(), t.example.to_string()))
        .collect();
    let mut group = c.benchmark_group("validate");
    for (name, data) in &examples {
        group.bench_function(format!("{name} example"), |b| {
            b.iter(|| {
                let value: serde_json::Value =
                    serde_json::from_str(black_box(data)).unwrap_or_default();
                black_box(catalogue.check(name, &value).is_ok())
            })
        });
    }
    // The schema's part alone, on data already parsed.
    let parsed: Vec<(String, serde_json::Value)> = examples
        .iter()
        .map(|(name, data)| (name.clone(), serde_json::from_str(data).unwrap_or_default()))
        .collect();
    group.bench_function("all nine examples, schema only", |b| {
        b.iter(|| {
            parsed
                .iter()
                .filter(|(name, value)| catalogue.check(name, black_box(value)).is_ok())
                .count()
        })
    });
    // A click without its recipient and with a URL that is not one: every error is named.
    let broken =
        r#"{"message":{"message_id":"m-1"},"url":"not a url","clicked_at":"2026-11-29T10:00:00Z"}"#;
    group.bench_function("click, two fields broken", |b| {
        b.iter(|| {
            let value: serde_json::Value =
                serde_json::from_str(black_box(broken)).unwrap_or_default();
            black_box(catalogue.check("click", &value).err().map(|e| e.len()))
        })
    });
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
