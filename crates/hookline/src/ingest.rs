//! Ingest: validate events, commit them with their deliveries, hand the deliveries over.
//!
//! The caller (the API) answers `202` only after [`Ingest::accept`] returns, and `accept`
//! returns only after the commit that holds the events and every one of their deliveries
//! was fsynced. Deliveries the dispatcher admitted are handed to it right after the commit;
//! the others wait, `pending` and due, for its poller.

use crate::dispatch::Dispatcher;
use crate::model::{Account, Timestamp, envelope, is_builtin_event_type, new_id};
use crate::store::{AcceptedEvent, DueDelivery, NewEvent, Store, StoreError};
use bytes::Bytes;
use serde_json::value::RawValue;
use std::collections::HashMap;
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
    /// A field breaks a rule; `path` names it (e.g. `events[3].type`).
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The ingest service.
#[derive(Clone)]
pub struct Ingest {
    store: Store,
    dispatcher: Dispatcher,
}

impl Ingest {
    pub fn new(store: Store, dispatcher: Dispatcher) -> Self {
        Ingest { store, dispatcher }
    }

    /// Validates `inputs` (all or nothing), commits them and hands their deliveries over.
    /// With `batch`, error paths name the input as `events[i].field`.
    pub async fn accept(
        &self,
        account: &Account,
        inputs: Vec<EventInput>,
        batch: bool,
    ) -> Result<Vec<AcceptedEvent>, IngestError> {
        let mut events = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.into_iter().enumerate() {
            let at = |field: &str| {
                if batch {
                    format!("events[{i}].{field}")
                } else {
                    field.to_owned()
                }
            };
            validate(&input).map_err(|(field, message)| IngestError::Invalid {
                path: at(field),
                message,
            })?;
            let id = new_id("evt");
            let created_at = Timestamp::now();
            let payload = Bytes::from(envelope(
                &id,
                &input.event_type,
                created_at,
                input.data.get(),
            ));
            events.push(NewEvent {
                id,
                event_type: input.event_type,
                data: input.data,
                created_at,
                payload,
            });
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
                // before this commit was visible, so tell it they are there now.
                if accepted
                    .iter()
                    .flat_map(|ev| ev.deliveries.iter())
                    .any(|d| !d.claimed)
                {
                    dispatcher.due_now();
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
        Ok(self
            .store
            .insert_events(account.id.clone(), events, admit, on_done)
            .await?)
    }
}

/// Checks one event: a known type and an object for `data`.
fn validate(input: &EventInput) -> Result<(), (&'static str, String)> {
    if !is_builtin_event_type(&input.event_type) {
        return Err(("type", format!("unknown event type {:?}", input.event_type)));
    }
    if !input.data.get().trim_start().starts_with('{') {
        return Err(("data", "must be a JSON object".into()));
    }
    Ok(())
}
