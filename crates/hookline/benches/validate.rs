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
    // As ingest does it: parse the `data`, then check it.
    let ingest_check = |name: &str, data: &str| {
        let value: serde_json::Value = serde_json::from_str(black_box(data)).unwrap_or_default();
        catalogue.check(name, &value).map_err(|e| e.len())
    };
    let mut group = c.benchmark_group("validate");
    for (name, data) in &examples {
        group.bench_function(format!("{name} example"), |b| {
            b.iter(|| black_box(ingest_check(name, data)))
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
    // A click without its recipient nor `first_click`, and with a URL that is not one: three
    // errors, each named.
    let broken =
        r#"{"message":{"message_id":"m-1"},"url":"not a url","clicked_at":"2026-11-29T10:00:00Z"}"#;
    group.bench_function("click, three fields broken", |b| {
        b.iter(|| black_box(ingest_check("click", broken)))
    });
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
