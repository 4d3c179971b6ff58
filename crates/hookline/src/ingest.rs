//! Ingest: validate events (each `data` against its type's schema in the
//! [`Catalogue`]), commit them with their deliveries, hand the deliveries over.
//!
//! The caller (the API) answers `202` only after [`Ingest::accept`] returns, and `accept`
//! returns only after the commit that holds the events and every one of their deliveries
//! was fsynced. Deliveries the dispatcher admitted are handed to it right after the commit;
//! the others wait, `pending` and due, for its poller.

use crate::catalogue::{Catalogue, FieldError};
use crate::dispatch::Dispatcher;
use crate::model::{Account, new_id};
use crate::store::{
    AcceptedEvent, AcceptedSummary, DueDelivery, IdempotencyKey, Ingested, NewEvent, Store,
    StoreError,
};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// One event as a producer sent it.
#[derive(Debug)]
pub struct EventInput {
    pub event_type: String,
    pub data: Box<RawValue>,
}

/// Why ingest refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Fields break rules; each names its field by path (e.g. `events[3].type`,
    /// `data.message.recipient`). Every failing field of the request is listed.
    #[error("{}", describe(.0))]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `path: message; path: message`.
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Compiled schemas of accounts' own event types, by (account, name, digest of the schema):
/// a changed schema is a new entry whatever the clocks of the nodes that changed it.
type CompiledSchemas = HashMap<(String, String, String), Arc<jsonschema::Validator>>;

/// The ingest service.
#[derive(Clone)]
pub struct Ingest {
    store: Store,
    dispatcher: Dispatcher,
    catalogue: Arc<Catalogue>,
    /// Compiled schemas of accounts' own event types, by (account, name, version).
    compiled: Arc<Mutex<CompiledSchemas>>,
    /// How long an idempotency key answers repeats.
    idempotency_window: std::time::Duration,
}

/// What an idempotency key must be, said to a client whose key is not.
pub const IDEMPOTENCY_KEY_RULE: &str = "must be 1 to 255 visible ASCII characters";

/// Whether `key` can be an idempotency key ([`IDEMPOTENCY_KEY_RULE`]).
pub fn is_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

impl Ingest {
    pub fn new(
        store: Store,
        dispatcher: Dispatcher,
        catalogue: Arc<Catalogue>,
        idempotency_window: std::time::Duration,
    ) -> Self {
        Ingest {
            store,
            dispatcher,
            catalogue,
            compiled: Arc::default(),
            idempotency_window,
        }
    }

    /// A request's idempotency key (1 to 255 visible ASCII characters), tied to a digest of
    /// what the request asks to store and to this server's window.
    pub fn key_for(
        &self,
        key: Option<String>,
        inputs: &[EventInput],
    ) -> Result<Option<IdempotencyKey>, IngestError> {
        let Some(key) = key else {
            return Ok(None);
        };
        if !is_idempotency_key(&key) {
            return Err(IngestError::Invalid(vec![FieldError {
                path: "idempotency_key".into(),
                message: IDEMPOTENCY_KEY_RULE.into(),
            }]));
        }
        Ok(Some(IdempotencyKey {
            key,
            request_hash: request_hash(inputs),
            window_ms: self.idempotency_window.as_millis() as i64,
        }))
    }

    /// What the first request under `key` was accepted as, if it was the same request and
    /// within the key's window (a read: the API asks before it meters or validates a keyed
    /// request, since a repeat stores nothing). A different request under the key is
    /// refused. `None`: no answer is recorded (yet: [`Ingest::accept`] decides for requests
    /// under one key that race, in its commit).
    pub async fn repeat_of(
        &self,
        account: &Account,
        key: &IdempotencyKey,
    ) -> Result<Option<Vec<AcceptedSummary>>, IngestError> {
        Ok(self
            .store
            .repeat_of(account.id.clone(), key.clone())
            .await?)
    }

    /// Validates `inputs` (all or nothing), commits them and hands their deliveries over.
    /// With `batch`, error paths name the input as `events[i].field`. Under an idempotency
    /// `key` (from [`Ingest::key_for`]), a repeat of the same request (within the window,
    /// across restarts and nodes) answers what the first was accepted as and creates
    /// nothing; a different request under the key is refused.
    pub async fn accept(
        &self,
        account: &Account,
        inputs: Vec<EventInput>,
        batch: bool,
        key: Option<IdempotencyKey>,
    ) -> Result<Answer, IngestError> {
        // The account's own types this request uses, with their compiled schemas.
        let mut custom: HashMap<String, Option<Arc<jsonschema::Validator>>> = HashMap::new();
        for input in &inputs {
            let name = &input.event_type;
            if self.catalogue.knows(name)
                || custom.contains_key(name)
                || !crate::catalogue::is_custom_name(name)
            {
                continue;
            }
            let Some(t) = self
                .store
                .get_event_type(account.id.clone(), name.clone())
                .await?
            else {
                continue;
            };
            let schema = match &t.schema {
                None => None,
                Some(schema) => Some(self.compiled_schema(&account.id, &t.name, schema)?),
            };
            custom.insert(name.clone(), schema);
        }
        let mut invalid = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            if let Err(errors) = validate(&self.catalogue, &custom, input) {
                invalid.extend(errors.into_iter().map(|mut e| {
                    if batch {
                        e.path = format!("events[{i}].{}", e.path);
                    }
                    e
                }));
            }
        }
        if !invalid.is_empty() {
            return Err(IngestError::Invalid(invalid));
        }
        let mut events = Vec::with_capacity(inputs.len());
        for input in inputs {
            events.push(NewEvent::accepted(
                new_id("evt"),
                input.event_type,
                input.data,
                self.store.stamp(),
            ));
        }

        // Admission is decided in the commit; the hand-over (or giving the room back) runs
        // on the writer thread once the commit's outcome is known, so a client that goes
        // away mid-request cannot strand a committed delivery.
        let admitted: Arc<Mutex<Vec<String>>> = Arc::default();
        let (d, a) = (self.dispatcher.clone(), admitted.clone());
        let admit = move |endpoint_id: &str| {
            let ok = d.try_admit(endpoint_id);
            if ok && let Ok(mut a) = a.lock() {
                a.push(endpoint_id.to_owned());
            }
            ok
        };
        let dispatcher = self.dispatcher.clone();
        let on_done = move |outcome: Result<&Vec<AcceptedEvent>, &StoreError>| match outcome {
            Ok(accepted) => {
                // Room taken for a delivery the store did not create after all (its endpoint
                // was disabled while the events were being committed) goes back.
                let held = admitted
                    .lock()
                    .map(|mut a| std::mem::take(&mut *a))
                    .unwrap_or_default();
                let mut created: HashMap<&str, usize> = HashMap::new();
                for d in accepted
                    .iter()
                    .flat_map(|ev| ev.deliveries.iter())
                    .filter(|d| d.claimed)
                {
                    *created.entry(d.endpoint.id.as_str()).or_default() += 1;
                }
                for ep in held {
                    match created.get_mut(ep.as_str()) {
                        Some(n) if *n > 0 => *n -= 1,
                        _ => dispatcher.release(&ep),
                    }
                }
                // Deliveries left `pending` for want of room: the poller may have looked
                // before this commit was visible, so tell it they are there now (it is
                // woken only if it could take one).
                // Once per endpoint: a batch may leave many deliveries of many endpoints.
                let mut told: HashSet<&str> = HashSet::new();
                for d in accepted
                    .iter()
                    .flat_map(|ev| ev.deliveries.iter())
                    .filter(|d| !d.claimed)
                {
                    let ep = d.endpoint.id.as_str();
                    if told.insert(ep) {
                        dispatcher.committed_pending(ep);
                    }
                }
                for ev in accepted {
                    for d in ev.deliveries.iter().filter(|d| d.claimed) {
                        dispatcher.submit(DueDelivery {
                            delivery_id: d.id.clone(),
                            row: d.row,
                            claim: 1,
                            attempts: 0,
                            event_id: ev.event.id.clone(),
                            payload: ev.payload.clone(),
                            endpoint: d.endpoint.clone(),
                            manual_after_end: false,
                            manual: false,
                        });
                    }
                }
            }
            Err(_) => {
                let held = admitted.lock().map(|mut a| std::mem::take(&mut *a));
                for ep in held.unwrap_or_default() {
                    dispatcher.release(&ep);
                }
            }
        };
        match key {
            None => {
                let accepted = self
                    .store
                    .insert_events(account.id.clone(), events, admit, on_done)
                    .await?;
                crate::telemetry::events_accepted(accepted.len());
                Ok(Answer::new(&accepted))
            }
            Some(key) => match self
                .store
                .insert_events_once(account.id.clone(), events, key, admit, on_done)
                .await?
            {
                Ingested::New(accepted) => {
                    crate::telemetry::events_accepted(accepted.len());
                    Ok(Answer::new(&accepted))
                }
                Ingested::Repeat(first) => Ok(Answer {
                    events: first,
                    repeat: true,
                }),
            },
        }
    }
}

/// What [`Ingest::accept`] answers: the events as accepted, and whether they were a
/// repeat's (a request under the same key stored them first; this one stored nothing).
#[derive(Debug)]
pub struct Answer {
    pub events: Vec<AcceptedSummary>,
    pub repeat: bool,
}

impl Answer {
    fn new(accepted: &[crate::store::AcceptedEvent]) -> Self {
        Answer {
            events: accepted.iter().map(AcceptedSummary::from).collect(),
            repeat: false,
        }
    }
}

impl Ingest {
    /// The compiled schema of an account's event type, compiled once per distinct schema.
    fn compiled_schema(
        &self,
        account_id: &str,
        name: &str,
        schema: &serde_json::Value,
    ) -> Result<Arc<jsonschema::Validator>, IngestError> {
        let digest: String = Sha256::digest(schema.to_string().as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = (account_id.to_owned(), name.to_owned(), digest);
        if let Some(v) = self.compiled.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(v);
        }
        let v = Arc::new(crate::catalogue::compile(schema).map_err(|e| {
            IngestError::Invalid(vec![FieldError {
                path: "type".into(),
                message: format!("the schema of {name:?} {e}"),
            }])
        })?);
        if let Ok(mut m) = self.compiled.lock() {
            // Older versions of the same type are of no more use.
            m.retain(|(a, n, _), _| !(a == account_id && n == name));
            m.insert(key, v.clone());
        }
        Ok(v)
    }
}

/// A digest of what a request asks to store: each event's type and `data`, in order.
fn request_hash(inputs: &[EventInput]) -> String {
    let mut h = Sha256::new();
    for i in inputs {
        h.update(i.event_type.as_bytes());
        h.update([0]);
        h.update(i.data.get().as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks one event: a known type (built-in, or one of the account's own in `custom`), and
/// `data` an object that satisfies the type's schema.
fn validate(
    catalogue: &Catalogue,
    custom: &HashMap<String, Option<Arc<jsonschema::Validator>>>,
    input: &EventInput,
) -> Result<(), Vec<FieldError>> {
    let field = |path: &str, message: String| {
        vec![FieldError {
            path: path.to_owned(),
            message,
        }]
    };
    let own = custom.get(&input.event_type);
    if !catalogue.knows(&input.event_type) && own.is_none() {
        return Err(field(
            "type",
            format!(
                "unknown event type {}",
                crate::model::quoted(&input.event_type)
            ),
        ));
    }
    if !input.data.get().trim_start().starts_with('{') {
        return Err(field("data", "must be a JSON object".into()));
    }
    let data = parse_data(input.data.get()).map_err(|e| field("data", data_error(&e)))?;
    match own {
        Some(Some(schema)) => crate::catalogue::check_with(schema, &data),
        Some(None) => Ok(()),
        None => catalogue.check(&input.event_type, &data),
    }
}

/// Why `data` could not be read for its checks. A key named twice is said as such (its
/// place in `data` would only confuse: it counts from `data`'s start, not the body's);
/// anything else serde refuses that the raw read let through (a number out of range, a
/// lone surrogate escape, nesting past serde's depth) is well-formed JSON all the same (so
/// a `422`, not a `400`), but not JSON Hookline can read.
fn data_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if e.classify() == serde_json::error::Category::Data {
        let at = format!(" at line {} column {}", e.line(), e.column());
        match text.strip_suffix(&at) {
            Some(said) => said.to_owned(),
            None => text,
        }
    } else {
        format!("is JSON Hookline cannot read: {text}")
    }
}

/// `data` read for its checks. An object that names a key twice is refused: JSON leaves
/// such an object's meaning to its reader (serde keeps the last value, many receivers the
/// first), so the schema would judge one value while a receiver of the delivery, which
/// carries `data` as it came, could read another.
fn parse_data(raw: &str) -> Result<serde_json::Value, serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    let mut de = serde_json::Deserializer::from_str(raw);
    let value = UniqueKeys.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Builds a [`serde_json::Value`] as serde_json's own visitor does, but fails on an object
/// whose key comes again.
struct UniqueKeys;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys {
    type Value = serde_json::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(UniqueKeys)? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde_json::map::Entry;
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(UniqueKeys)?);
                }
                Entry::Occupied(taken) => {
                    return Err(serde::de::Error::custom(format_args!(
                        "names the key {} twice in one object",
                        crate::model::quoted(taken.key())
                    )));
                }
            }
        }
        Ok(serde_json::Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_read_as_serde_json_reads_it() {
        for raw in [
            r#"{"a":1,"b":-2,"c":1.5e300,"d":18446744073709551615,"e":184467440737095516150}"#,
            r#"{"s":"caf\u00e9 \ud83d\ude00","n":null,"t":true,"f":false,"l":[1,{"x":[]},"y"]}"#,
            r#"{"nested":{"deeper":{"deepest":{}}},"empty":"","zero":-0.0}"#,
        ] {
            let expected: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert_eq!(parse_data(raw).unwrap(), expected, "{raw}");
        }
    }

    #[test]
    fn a_key_named_twice_in_any_object_is_refused() {
        for (raw, key) in [
            (r#"{"first_open":"no","first_open":true}"#, "first_open"),
            (r#"{"message":{"id":"m","id":"n"}}"#, "id"),
            (r#"{"list":[{"a":1},{"b":1,"b":2}]}"#, "b"),
        ] {
            let e = data_error(&parse_data(raw).unwrap_err());
            assert_eq!(
                e,
                format!("names the key \"{key}\" twice in one object"),
                "{raw}"
            );
        }
        // The same key in two objects is no repeat; an escaped spelling is the same key.
        assert!(parse_data(r#"{"a":{"k":1},"b":{"k":2}}"#).is_ok());
        let e = data_error(&parse_data(r#"{"a":1,"\u0061":2}"#).unwrap_err());
        assert_eq!(e, r#"names the key "a" twice in one object"#);
    }

    #[test]
    fn what_else_serde_cannot_read_is_said_so() {
        for raw in [r#"{"b":1e400}"#, r#"{"a":"\ud800"}"#] {
            let e = data_error(&parse_data(raw).unwrap_err());
            assert!(
                e.starts_with("is JSON Hookline cannot read: "),
                "{raw}: {e}"
            );
        }
        let deep = format!("{}{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        let deep = deep.replacen("}", "1}", 1);
        let e = data_error(&parse_data(&deep).unwrap_err());
        assert!(
            e.starts_with("is JSON Hookline cannot read: recursion limit"),
            "{e}"
        );
    }
}
