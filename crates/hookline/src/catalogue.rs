//! The event catalogue: the nine built-in event types, each with a description, the JSON
//! Schema (draft 2020-12) of its `data`, and a realistic example.
//!
//! The schemas are compiled once ([`Catalogue::builtin`]); ingest checks every event's
//! `data` against its type's schema and names every failing field by its path
//! (`data.message.recipient`). Unknown extra fields are allowed: producers add their own.
//! `../shared/event-types.md` describes the same types in prose.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// One type of the catalogue, as `GET /v1/event-types` serves it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventType {
    pub name: String,
    pub description: String,
    /// The JSON Schema (draft 2020-12) of the event's `data`.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// A realistic `data` of this type; `null` for the account's own types.
    #[schema(value_type = Option<Object>)]
    pub example: Value,
}

/// One way an event's `data` breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The field, from `data` (e.g. `data.message.recipient`, `data.tags[2]`).
    pub path: String,
    pub message: String,
}

/// The compiled catalogue.
pub struct Catalogue {
    types: Vec<EventType>,
    validators: HashMap<String, jsonschema::Validator>,
}

impl std::fmt::Debug for Catalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogue")
            .field("types", &self.types.len())
            .finish()
    }
}

impl Catalogue {
    /// The nine built-in types, compiled. Fails only if a built-in schema is itself invalid
    /// (a bug, caught by the tests).
    pub fn builtin() -> Result<Catalogue, String> {
        let types = builtin_types();
        let mut validators = HashMap::new();
        for t in &types {
            let v = jsonschema::draft202012::options()
                .should_validate_formats(true)
                .build(&t.schema)
                .map_err(|e| format!("the schema of {:?} does not compile: {e}", t.name))?;
            validators.insert(t.name.clone(), v);
        }
        Ok(Catalogue { types, validators })
    }

    /// Every type, in catalogue order.
    pub fn types(&self) -> &[EventType] {
        &self.types
    }

    /// Whether `name` is a type of the catalogue.
    pub fn knows(&self, name: &str) -> bool {
        self.validators.contains_key(name)
    }

    /// Checks `data` against the schema of `event_type` (which must be known); every
    /// failure, with its path under `data`.
    pub fn check(&self, event_type: &str, data: &Value) -> Result<(), Vec<FieldError>> {
        match self.validators.get(event_type) {
            Some(v) => check_with(v, data),
            None => Ok(()),
        }
    }
}

/// Compiles a schema an account gave for its own event type (draft 2020-12, formats
/// checked); the error says why it is not one.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() {
        return Err("must be a JSON Schema object".into());
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| {
            format!(
                "is not a valid JSON Schema: {}",
                crate::model::clipped(&e.to_string())
            )
        })
}

/// Whether `name` may name an account's own event type: `[a-z0-9_.]+`, at most 64
/// characters, not a built-in type nor `ping`.
pub fn is_custom_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && !crate::model::is_builtin_event_type(name)
        && name != "ping"
}

/// Checks `data` against a compiled schema; every failure, with its path under `data`.
pub fn check_with(v: &jsonschema::Validator, data: &Value) -> Result<(), Vec<FieldError>> {
    // Nearly every event is valid: the plain yes or no first, which builds no errors, and
    // the errors only for an event that has some.
    if v.is_valid(data) {
        return Ok(());
    }
    {
        let mut errors: Vec<FieldError> = v
            .iter_errors(data)
            .map(|e| {
                let mut path = dotted(&e.instance_path().to_string());
                // A missing property is reported at its parent: name the property itself.
                if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind()
                    && let Some(name) = property.as_str()
                {
                    path.push('.');
                    path.push_str(name);
                    return FieldError {
                        path,
                        message: "is required".into(),
                    };
                }
                // The validator's message quotes the value it refused: a long one is left out
                // (the path says where it is), and what the schema says is clipped.
                let full = e.to_string();
                let message = if full.chars().count() <= 160 {
                    full
                } else {
                    crate::model::clipped(&e.masked().to_string())
                };
                FieldError { path, message }
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        errors.sort_by(|a, b| a.path.cmp(&b.path).then(a.message.cmp(&b.message)));
        errors.dedup();
        Err(errors)
    }
}

/// `/message/tags/2` → `data.message.tags[2]`.
fn dotted(pointer: &str) -> String {
    let mut out = String::from("data");
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&part);
            out.push(']');
        } else {
            out.push('.');
            out.push_str(&part);
        }
    }
    out
}

/// The schema of an object with these `required` names and `properties`; other properties
/// are allowed.
fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn schema_of(description: &str, body: Value) -> Value {
    let mut s = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": description,
        "$defs": {
            "message": object(&["message_id", "recipient"], json!({
                "message_id": {"type": "string", "minLength": 1},
                "recipient": {"type": "string", "format": "email"},
                "contact_id": {"type": "string"},
                "campaign_id": {"type": "string"},
                "automation_id": {"type": "string"},
                "list_id": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "metadata": {"type": "object"},
                "sending_domain": {"type": "string"},
                "sending_ip": {"type": "string"}
            })),
            "geo": object(&[], json!({
                "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
                "region": {"type": "string"},
                "city": {"type": "string"}
            })),
            "client": object(&[], json!({
                "name": {"type": "string"},
                "os": {"type": "string"},
                "device": {"enum": ["desktop", "mobile", "tablet", "other", "unknown"]}
            }))
        }
    });
    if let (Some(s), Some(b)) = (s.as_object_mut(), body.as_object()) {
        for (k, v) in b {
            s.insert(k.clone(), v.clone());
        }
    }
    s
}

fn builtin_types() -> Vec<EventType> {
    let message = json!({"$ref": "#/$defs/message"});
    let geo = json!({"$ref": "#/$defs/geo"});
    let client = json!({"$ref": "#/$defs/client"});
    let example_message = json!({
        "message_id": "msg_01JD8Q4X7K2V9M3N5P6R",
        "recipient": "ana.silva@example.com",
        "contact_id": "ct_48213",
        "campaign_id": "cmp_autumn_sale",
        "list_id": "lst_newsletter",
        "tags": ["newsletter", "autumn"],
        "metadata": {"order_ref": "A-1042"},
        "sending_domain": "mail.shop.example",
        "sending_ip": "198.51.100.23"
    });
    // The description is the model's (one source for the catalogue and the docs); the
    // second argument says the same for the reader of this file.
    let t = |name: &str, _about: &str, body: Value, example: Value| {
        let description = crate::model::BUILTIN_EVENT_TYPES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
            .unwrap_or_default();
        EventType {
            name: name.to_owned(),
            description: description.to_owned(),
            schema: schema_of(description, body),
            example,
        }
    };
    vec![
        t(
            "delivery",
            "The receiving mail server accepted the message.",
            object(
                &["message", "smtp"],
                json!({
                    "message": message,
                    "smtp": object(&["code", "response"], json!({
                        "code": {"type": "integer"},
                        "enhanced_status": {"type": "string"},
                        "response": {"type": "string"}
                    })),
                    "mta": object(&[], json!({
                        "remote_host": {"type": "string"},
                        "remote_ip": {"type": "string"},
                        "tls": {"type": "boolean"}
                    })),
                    "attempt": {"type": "integer", "minimum": 1},
                    "processing_time_ms": {"type": "integer", "minimum": 0}
                }),
            ),
            json!({
                "message": example_message,
                "smtp": {"code": 250, "enhanced_status": "2.0.0",
                         "response": "250 2.0.0 OK 1732790400 q7si123456"},
                "mta": {"remote_host": "mx1.example.com", "remote_ip": "203.0.113.9", "tls": true},
                "attempt": 1,
                "processing_time_ms": 412
            }),
        ),
        t(
            "open",
            "The recipient (or a privacy proxy, see machine_open) opened the message.",
            object(
                &["message", "first_open"],
                json!({
                    "message": message,
                    "first_open": {"type": "boolean"},
                    "user_agent": {"type": "string"},
                    "ip": {"type": "string"},
                    "geo": geo,
                    "client": client,
                    "machine_open": {"type": "boolean"}
                }),
            ),
            json!({
                "message": example_message,
                "first_open": true,
                "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X)",
                "ip": "192.0.2.44",
                "geo": {"country": "PT", "region": "Lisboa", "city": "Lisbon"},
                "client": {"name": "Apple Mail", "os": "iOS", "device": "mobile"},
                "machine_open": false
            }),
        ),
        t(
            "click",
            "The recipient clicked a tracked link.",
            object(
                &["message", "url", "first_click"],
                json!({
                    "message": message,
                    "url": {"type": "string", "format": "uri"},
                    "link_id": {"type": "string"},
                    "first_click": {"type": "boolean"},
                    "user_agent": {"type": "string"},
                    "ip": {"type": "string"},
                    "geo": geo,
                    "client": client,
                    "suspected_bot": {"type": "boolean"}
                }),
            ),
            json!({
                "message": example_message,
                "url": "https://shop.example/autumn?utm_source=newsletter",
                "link_id": "lnk_hero_button",
                "first_click": true,
                "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
                "ip": "192.0.2.44",
                "geo": {"country": "PT", "city": "Lisbon"},
                "client": {"name": "Chrome", "os": "Windows", "device": "desktop"},
                "suspected_bot": false
            }),
        ),
        t(
            "bounce",
            "The message could not be delivered.",
            object(
                &["message", "bounce_class", "final", "suppressed"],
                json!({
                    "message": message,
                    "bounce_class": {"enum": ["hard", "soft", "block", "undetermined"]},
                    "category": {
                        "type": "string",
                        "description": "open: invalid_mailbox, mailbox_full, message_too_large, content, policy, reputation, dns, auth, rate_limit, other"
                    },
                    "final": {"type": "boolean"},
                    "smtp": object(&[], json!({
                        "code": {"type": "integer"},
                        "enhanced_status": {"type": "string"},
                        "diagnostic": {"type": "string"}
                    })),
                    "reporting_mta": {"type": "string"},
                    "suppressed": {"type": "boolean"}
                }),
            ),
            json!({
                "message": example_message,
                "bounce_class": "hard",
                "category": "invalid_mailbox",
                "final": true,
                "smtp": {"code": 550, "enhanced_status": "5.1.1",
                         "diagnostic": "550 5.1.1 The email account that you tried to reach does not exist"},
                "reporting_mta": "mta3.mail.shop.example",
                "suppressed": true
            }),
        ),
        t(
            "complaint",
            "A recipient marked the message as spam.",
            object(
                &["message", "source", "suppressed"],
                json!({
                    "message": message,
                    "source": {"enum": ["feedback_loop", "manual", "other"]},
                    "feedback_type": {
                        "enum": ["abuse", "fraud", "virus", "auth-failure", "not-spam", "other"]
                    },
                    "mailbox_provider": {"type": "string"},
                    "recipient_inferred": {"type": "boolean"},
                    "suppressed": {"type": "boolean"}
                }),
            ),
            json!({
                "message": example_message,
                "source": "feedback_loop",
                "feedback_type": "abuse",
                "mailbox_provider": "outlook.com",
                "recipient_inferred": false,
                "suppressed": true
            }),
        ),
        t(
            "unsubscribe",
            "A contact unsubscribed from a list, or from everything.",
            {
                let mut s = object(
                    &["contact_id", "email", "scope", "method"],
                    json!({
                        "contact_id": {"type": "string", "minLength": 1},
                        "email": {"type": "string", "format": "email"},
                        "scope": {"enum": ["list", "all"]},
                        "list_ids": {"type": "array", "items": {"type": "string"}},
                        "method": {"enum": ["one_click", "link", "mailto", "preference_center",
                                            "reply", "api", "admin"]},
                        "message": message,
                        "reason": {"type": "string"},
                        "ip": {"type": "string"},
                        "user_agent": {"type": "string"}
                    }),
                );
                if let Some(o) = s.as_object_mut() {
                    o.insert(
                        "if".into(),
                        json!({"properties": {"scope": {"const": "list"}}, "required": ["scope"]}),
                    );
                    o.insert("then".into(), json!({"required": ["list_ids"]}));
                }
                s
            },
            json!({
                "contact_id": "ct_48213",
                "email": "ana.silva@example.com",
                "scope": "list",
                "list_ids": ["lst_newsletter"],
                "method": "one_click",
                "message": example_message,
                "reason": "too many emails"
            }),
        ),
        t(
            "form_submit",
            "A contact submitted a form.",
            object(
                &["form_id", "submission_id", "fields"],
                json!({
                    "form_id": {"type": "string", "minLength": 1},
                    "submission_id": {"type": "string", "minLength": 1},
                    "fields": {
                        "type": "object",
                        "additionalProperties": {"anyOf": [
                            {"type": "string"}, {"type": "number"}, {"type": "boolean"},
                            {"type": "array", "items": {"type": "string"}}
                        ]}
                    },
                    "form_name": {"type": "string"},
                    "contact_id": {"type": "string"},
                    "contact_created": {"type": "boolean"},
                    "list_ids": {"type": "array", "items": {"type": "string"}},
                    "source": object(&[], json!({
                        "page_url": {"type": "string"},
                        "referrer": {"type": "string"},
                        "ip": {"type": "string"},
                        "user_agent": {"type": "string"}
                    }))
                }),
            ),
            json!({
                "form_id": "frm_webinar_signup",
                "submission_id": "sub_7731",
                "fields": {"email": "li.wei@example.com", "company_size": 42,
                           "consent": true, "interests": ["deliverability", "automation"]},
                "form_name": "Webinar sign-up",
                "contact_id": "ct_90117",
                "contact_created": true,
                "list_ids": ["lst_webinar"],
                "source": {"page_url": "https://shop.example/webinar", "referrer": "https://www.example.org/"}
            }),
        ),
        t(
            "trigger_action",
            "An automation was triggered for a contact.",
            object(
                &["automation_id", "run_id", "contact_id", "trigger"],
                json!({
                    "automation_id": {"type": "string", "minLength": 1},
                    "run_id": {"type": "string", "minLength": 1},
                    "contact_id": {"type": "string", "minLength": 1},
                    "trigger": object(&["type", "name"], json!({
                        "type": {
                            "type": "string",
                            "description": "open: list_subscribe, form_submit, tag_added, field_changed, date, email_opened, link_clicked, api, custom"
                        },
                        "name": {"type": "string"},
                        "source_event_id": {"type": "string"}
                    })),
                    "automation_name": {"type": "string"}
                }),
            ),
            json!({
                "automation_id": "aut_welcome",
                "run_id": "run_5521",
                "contact_id": "ct_90117",
                "trigger": {"type": "form_submit", "name": "Webinar sign-up",
                            "source_event_id": "evt_01JD8Q4X7K2V9M3N5P6R8T0W2Y"},
                "automation_name": "Welcome series"
            }),
        ),
        t(
            "workflow_step",
            "An automation executed one step for a contact.",
            {
                let mut s = object(
                    &[
                        "automation_id",
                        "run_id",
                        "step_id",
                        "contact_id",
                        "step_type",
                        "outcome",
                    ],
                    json!({
                        "automation_id": {"type": "string", "minLength": 1},
                        "run_id": {"type": "string", "minLength": 1},
                        "step_id": {"type": "string", "minLength": 1},
                        "contact_id": {"type": "string", "minLength": 1},
                        "step_type": {
                            "type": "string",
                            "description": "open: send_email, wait, condition, split, tag, update_field, webhook, goal, exit"
                        },
                        "outcome": {"enum": ["success", "failed", "skipped", "waiting"]},
                        "error": object(&[], json!({
                            "code": {"type": "string"},
                            "message": {"type": "string"}
                        })),
                        "step_name": {"type": "string"},
                        "next_step_id": {"type": "string"},
                        "message_id": {"type": "string"},
                        "started_at": {"type": "string", "format": "date-time"},
                        "completed_at": {"type": "string", "format": "date-time"}
                    }),
                );
                if let Some(o) = s.as_object_mut() {
                    o.insert(
                        "if".into(),
                        json!({"properties": {"outcome": {"const": "failed"}}, "required": ["outcome"]}),
                    );
                    o.insert("then".into(), json!({"required": ["error"]}));
                }
                s
            },
            json!({
                "automation_id": "aut_welcome",
                "run_id": "run_5521",
                "step_id": "stp_send_day1",
                "contact_id": "ct_90117",
                "step_type": "send_email",
                "outcome": "success",
                "step_name": "Day 1: welcome email",
                "next_step_id": "stp_wait_2d",
                "message_id": "msg_01JD8R0B3C4D5E6F7G8H",
                "started_at": "2026-11-28T09:30:00.000Z",
                "completed_at": "2026-11-28T09:30:01.250Z"
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_schema_compiles_and_accepts_its_example() {
        let c = Catalogue::builtin().unwrap();
        assert_eq!(c.types().len(), crate::model::BUILTIN_EVENT_TYPES.len());
        for t in c.types() {
            assert!(crate::model::is_builtin_event_type(&t.name), "{}", t.name);
            assert_eq!(c.check(&t.name, &t.example), Ok(()), "{}", t.name);
        }
    }

    #[test]
    fn paths_name_the_field_and_missing_ones_by_name() {
        let c = Catalogue::builtin().unwrap();
        let errors = c
            .check(
                "open",
                &json!({"message": {"recipient": "nope"}, "first_open": "yes",
                        "geo": {"country": "portugal"}}),
            )
            .unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "data.first_open",
                "data.geo.country",
                "data.message.message_id",
                "data.message.recipient"
            ],
            "{errors:?}"
        );
        assert_eq!(dotted("/message/tags/2"), "data.message.tags[2]");
    }
}
