//! Plain data: the records Hookline stores and serves. No I/O, no HTTP, no database.

use serde::{Deserialize, Serialize};
use std::fmt;
use utoipa::ToSchema;

/// Milliseconds since the Unix epoch. Serialised as RFC 3339 UTC with milliseconds,
/// e.g. `2026-11-26T17:43:35.123Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ToSchema)]
#[schema(value_type = String, format = DateTime, example = "2026-11-26T17:43:35.123Z")]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }
    /// Whole seconds since the epoch.
    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
    /// Parses an RFC 3339 time.
    pub fn parse(text: &str) -> Option<Self> {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Timestamp(t.timestamp_millis()))
    }
}

impl Timestamp {
    /// RFC 3339 in UTC with milliseconds, e.g. `2026-11-26T17:43:35.123Z`, for the years 0
    /// to 9999 (every time Hookline makes); `None` outside them. Written digit by digit: the
    /// padded `format!` it replaces cost thousands of instructions, and every delivery's
    /// envelope and every `202` carry one.
    fn rfc3339(self) -> Option<[u8; 24]> {
        use chrono::{Datelike as _, Timelike as _};
        let t = chrono::DateTime::from_timestamp_millis(self.0)?;
        let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, t.month());
        put(8, 2, t.day());
        put(11, 2, t.hour());
        put(14, 2, t.minute());
        put(17, 2, t.second());
        put(20, 3, t.timestamp_subsec_millis().min(999));
        Some(out)
    }

    /// Appends the RFC 3339 form (see [`fmt::Display`]) to `out`.
    pub fn push_rfc3339(self, out: &mut Vec<u8>) {
        match self.rfc3339() {
            Some(text) => out.extend_from_slice(&text),
            None => out.extend_from_slice(self.to_string().as_bytes()),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use chrono::{Datelike as _, Timelike as _};
        if let Some(text) = self.rfc3339() {
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.timestamp_subsec_millis()
            ),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339() {
            Some(text) => match std::str::from_utf8(&text) {
                Ok(text) => s.serialize_str(text),
                Err(_) => s.collect_str(self),
            },
            None => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text).ok_or_else(|| serde::de::Error::custom("expected an RFC 3339 time"))
    }
}

/// An account's plan. Webhooks are a Pro and Business feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Free,
    Pro,
    Business,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Business => "business",
        }
    }
    /// Whether the plan includes webhooks (endpoints and their deliveries). Free does not:
    /// its events are kept for the pull API only.
    pub fn includes_webhooks(self) -> bool {
        self != Plan::Free
    }
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "free" => Some(Plan::Free),
            "pro" => Some(Plan::Pro),
            "business" => Some(Plan::Business),
            _ => None,
        }
    }
}

/// What a plan allows. Limits are per account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// Endpoints an account may have at once.
    pub max_endpoints: u32,
    /// Events an account may ingest per second (per node), `None` for no limit.
    pub ingest_per_sec: Option<u32>,
    /// How long the account's events, with their deliveries and attempts, are kept.
    pub retention: std::time::Duration,
}

impl PlanLimits {
    /// These limits changed by `spec`, e.g. `endpoints=100,ingest=2000,retention=30d`
    /// (`ingest=none`: no limit); fields not named stay as they are.
    pub fn with(mut self, spec: &str) -> Result<Self, String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=value"))?;
            let number = |v: &str| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{key}: {v:?} is not a whole number"))
            };
            match key.trim() {
                "endpoints" => self.max_endpoints = number(value)?,
                "retention" => {
                    self.retention =
                        parse_duration(value.trim()).map_err(|e| format!("retention: {e}"))?;
                }
                "ingest" if value.trim() == "none" => self.ingest_per_sec = None,
                "ingest" => {
                    let n = number(value)?;
                    if n == 0 {
                        return Err("ingest: at least 1 event a second, or none".into());
                    }
                    self.ingest_per_sec = Some(n);
                }
                other => {
                    return Err(format!(
                        "{other:?} is not a plan limit (endpoints, ingest, retention)"
                    ));
                }
            }
        }
        Ok(self)
    }
}

/// The limits of every plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub free: PlanLimits,
    pub pro: PlanLimits,
    pub business: PlanLimits,
}

impl Limits {
    pub fn of(&self, plan: Plan) -> &PlanLimits {
        match plan {
            Plan::Free => &self.free,
            Plan::Pro => &self.pro,
            Plan::Business => &self.business,
        }
    }
}

fn days(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n * 24 * 3600)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            free: PlanLimits {
                max_endpoints: 0,
                ingest_per_sec: Some(100),
                retention: days(7),
            },
            pro: PlanLimits {
                max_endpoints: 100,
                ingest_per_sec: Some(2_000),
                retention: days(30),
            },
            business: PlanLimits {
                max_endpoints: 1_000,
                ingest_per_sec: Some(20_000),
                retention: days(90),
            },
        }
    }
}

/// An API key as listed: never the key itself, which is shown once and stored as a hash.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ApiKey {
    /// `key_…`: names the key for revocation.
    pub id: String,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A tenant. Every other record belongs to exactly one account.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub plan: Plan,
    pub created_at: Timestamp,
}

/// A receiver registered by an account. Its `Debug` form leaves the secrets out.
#[derive(Clone, Serialize, ToSchema)]
pub struct Endpoint {
    pub id: String,
    #[serde(skip)]
    pub account_id: String,
    pub url: String,
    pub description: String,
    /// Type names, or `["*"]` for every type.
    pub event_types: Vec<String>,
    /// Extra headers sent with every request to this endpoint.
    pub headers: std::collections::BTreeMap<String, String>,
    pub rate_limit_per_sec: Option<u32>,
    pub enabled: bool,
    /// Why the endpoint was disabled, when Hookline disabled it (e.g. it answered 410).
    pub disabled_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The signing secret (`whsec_…`). Never serialised with the endpoint itself.
    #[serde(skip)]
    pub secret: String,
    /// The secrets rotated out whose overlap had not ended at the last rotation, newest
    /// first: each keeps signing beside `secret` until its own `until`.
    #[serde(skip)]
    pub previous_secrets: Vec<PreviousSecret>,
    /// Until when a secret rotated out still signs (`null` when none does any more): the
    /// latest `until` of `previous_secrets` still to come when the endpoint was read.
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// A secret rotated out: it signs beside the endpoint's current one until `until`.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub secret: String,
    pub until: Timestamp,
}

impl fmt::Debug for PreviousSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreviousSecret")
            .field("secret", &"<redacted>")
            .field("until", &self.until)
            .finish()
    }
}

/// The end of the latest overlap among `previous` that has not ended at `now` (an
/// endpoint's `previous_secret_expires_at`): a secret signs while `now < until`.
pub fn latest_until(previous: &[PreviousSecret], now: Timestamp) -> Option<Timestamp> {
    previous.iter().map(|p| p.until).filter(|u| now < *u).max()
}

/// How many rotated-out secrets an endpoint keeps signing with at most: a rotation beyond
/// that many within their overlaps ends the oldest at once.
pub const MAX_PREVIOUS_SECRETS: usize = 10;

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("account_id", &self.account_id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("enabled", &self.enabled)
            .field("updated_at", &self.updated_at)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Makes `secret` the signing secret. The one it replaces signs beside it until `until`,
    /// and each secret rotated out before keeps its own time: a second rotation within the
    /// overlap does not cut short the first one's (a receiver that still holds the first
    /// secret, say because the answer to the first rotation was lost, keeps verifying).
    /// Secrets whose time has passed at `now` are forgotten, and beyond
    /// [`MAX_PREVIOUS_SECRETS`] the oldest.
    pub fn rotate_secret(&mut self, secret: String, until: Timestamp, now: Timestamp) {
        let old = std::mem::replace(&mut self.secret, secret);
        self.previous_secrets.retain(|p| p.until > now);
        self.previous_secrets
            .insert(0, PreviousSecret { secret: old, until });
        self.previous_secrets.truncate(MAX_PREVIOUS_SECRETS);
        self.previous_secret_expires_at = latest_until(&self.previous_secrets, now);
    }

    /// Whether this endpoint wants events of `event_type`.
    pub fn subscribes_to(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|t| t == "*" || t == event_type)
    }
}

/// One event, as stored and as served by the API.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: Timestamp,
    #[schema(value_type = Object)]
    pub data: Box<serde_json::value::RawValue>,
}

/// The exact bytes a receiver gets, `{"id","type","timestamp","data"}`, from an event's
/// parts; built once per event and shared by all of its deliveries. `data` must be valid
/// JSON text.
pub fn envelope(id: &str, event_type: &str, created_at: Timestamp, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + id.len() + event_type.len() + 64);
    out.extend_from_slice(b"{\"id\":");
    push_json_str(&mut out, id);
    out.extend_from_slice(b",\"type\":");
    push_json_str(&mut out, event_type);
    out.extend_from_slice(b",\"timestamp\":\"");
    created_at.push_rfc3339(&mut out);
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
    out
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// Taken by the dispatcher: queued in memory or being sent.
    Delivering,
    Succeeded,
    /// Retries exhausted, or the endpoint was removed or disabled.
    Failed,
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivering => "delivering",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => DeliveryStatus::Pending,
            "delivering" => DeliveryStatus::Delivering,
            "succeeded" => DeliveryStatus::Succeeded,
            "failed" => DeliveryStatus::Failed,
            "cancelled" => DeliveryStatus::Cancelled,
            _ => return None,
        })
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Succeeded | DeliveryStatus::Failed | DeliveryStatus::Cancelled
        )
    }
}

/// One event for one endpoint.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempt_count: u32,
    /// When a `pending` delivery is due: its retry schedule's time, or, while its endpoint
    /// is held back (it kept failing, or asked to wait with `Retry-After`), the hold's end
    /// if that is later (the answering node's hold; each node of a cluster keeps its own).
    pub next_attempt_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One HTTP request made for a delivery, and what came of it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: u32,
    pub started_at: Timestamp,
    pub duration_ms: u64,
    /// The answer's status, when one arrived.
    pub status_code: Option<u16>,
    /// Why the attempt failed when no status arrived (connecting, the timeout, a refused
    /// target); beside a redirect's status, where it pointed (redirects are not followed).
    pub error: Option<String>,
    /// The first 4 KiB of the response body (lossy UTF-8: bytes that are not UTF-8, and NUL
    /// characters, read as U+FFFD).
    pub response_body: Option<String>,
}

/// The built-in event types, with a one-line description each.
pub const BUILTIN_EVENT_TYPES: &[(&str, &str)] = &[
    (
        "delivery",
        "The receiving mail server accepted the message.",
    ),
    ("open", "A recipient opened the message."),
    ("click", "A recipient clicked a tracked link."),
    ("bounce", "The message bounced."),
    ("complaint", "A recipient marked the message as spam."),
    (
        "unsubscribe",
        "A contact unsubscribed from a list or from everything.",
    ),
    ("form_submit", "A contact submitted a form."),
    (
        "trigger_action",
        "An automation was triggered for a contact.",
    ),
    (
        "workflow_step",
        "An automation executed one step for a contact.",
    ),
];

/// The type `POST /v1/endpoints/{id}/test` sends. Producers cannot emit it.
pub const PING_EVENT_TYPE: &str = "ping";

/// Whether `name` is a built-in event type.
pub fn is_builtin_event_type(name: &str) -> bool {
    BUILTIN_EVENT_TYPES.iter().any(|(n, _)| *n == name)
}

/// `text` for an error message: quoted as `{:?}` quotes it, but only its first 64
/// characters, then `…` and its whole length, so that an answer never repeats a long input.
pub fn quoted(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        None => format!("{text:?}"),
        Some((at, _)) => format!("{:?}… ({} bytes)", &text[..at], text.len()),
    }
}

/// A message that may carry someone's input (a parser's, a validator's): its first 200
/// characters, then `…` and its whole length.
pub fn clipped(message: &str) -> String {
    const SHOWN: usize = 200;
    match message.char_indices().nth(SHOWN) {
        None => message.to_owned(),
        Some((at, _)) => format!("{}… ({} bytes)", &message[..at], message.len()),
    }
}

/// A new prefixed id (`evt_`, `ep_`, …): the prefix, an underscore and a ULID, so ids sort
/// by creation time.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::generate())
}

/// An event type an account defined beside the built-in ones.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CustomEventType {
    /// `[a-z0-9_.]+`, not a built-in name.
    pub name: String,
    pub description: String,
    /// The JSON Schema (draft 2020-12) its events' `data` must satisfy; none: any object.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A duration such as `500ms`, `5s`, `10m`, `1h` or `30d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h or d)"))?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit (use ms, s, m, h or d)"
            ));
        }
    };
    // At most a hundred years: every duration here is added to times in milliseconds.
    const MAX_MS: u64 = 100 * 366 * 86_400_000;
    match n.checked_mul(unit_ms) {
        Some(ms) if ms <= MAX_MS => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(format!("{text:?} is longer than a hundred years")),
    }
}

#[cfg(test)]
mod quoting_tests {
    use super::{clipped, quoted};

    /// An input of up to 64 characters is quoted whole; a longer one, its first 64 (cut
    /// between characters, never inside one) and its length.
    #[test]
    fn long_inputs_are_quoted_in_part() {
        assert_eq!(quoted("open"), "\"open\"");
        assert_eq!(quoted(&"a".repeat(64)), format!("{:?}", "a".repeat(64)));
        let long = "é".repeat(5000);
        assert_eq!(
            quoted(&long),
            format!("{:?}… (10000 bytes)", "é".repeat(64))
        );
        assert_eq!(
            quoted(&"b".repeat(65)),
            format!("{:?}… (65 bytes)", "b".repeat(64))
        );
        assert_eq!(clipped("short"), "short");
        assert_eq!(
            clipped(&"é".repeat(201)),
            format!("{}… (402 bytes)", "é".repeat(200))
        );
    }
}

#[cfg(test)]
mod plan_tests {
    use super::{Limits, parse_duration};
    use std::time::Duration;

    #[test]
    fn plan_specs_change_only_what_they_name() {
        let pro = Limits::default().pro;
        let changed = pro.with("endpoints=5, retention=2d").expect("valid spec");
        assert_eq!(changed.max_endpoints, 5);
        assert_eq!(changed.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(changed.ingest_per_sec, pro.ingest_per_sec);
        assert_eq!(pro.with("ingest=none").expect("valid").ingest_per_sec, None);
        assert_eq!(pro.with("").expect("empty is no change"), pro);
        for bad in [
            "endpoints",
            "ingest=0",
            "ingest=-1",
            "retention=5",
            "colour=red",
        ] {
            assert!(pro.with(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("10x").is_err());
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::{Timestamp, envelope};

    /// chrono's own RFC 3339 with milliseconds, the reference.
    fn reference(ms: i64) -> String {
        chrono::DateTime::from_timestamp_millis(ms)
            .expect("in range")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let year_0 = -62_167_219_200_000_i64;
        let year_9999_end = 253_402_300_799_999_i64;
        let mut cases = vec![
            0,
            1,
            999,
            -1,
            -1000,
            951_782_400_000,   // 2000-02-29
            1_764_892_800_000, // 2025-12-05
            1_798_761_599_999, // the last millisecond of 2026
            year_0,
            year_9999_end,
        ];
        // A spread over the whole range, deterministic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let span = (year_9999_end - year_0) as u64;
            cases.push(year_0 + (x % span) as i64);
        }
        for ms in cases {
            let t = Timestamp(ms);
            let want = reference(ms);
            assert_eq!(t.to_string(), want, "{ms}");
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{want}\""));
            let mut pushed = Vec::new();
            t.push_rfc3339(&mut pushed);
            assert_eq!(String::from_utf8(pushed).unwrap(), want);
            assert_eq!(Timestamp::parse(&want), Some(t));
        }
    }

    #[test]
    fn years_beyond_four_digits_still_print() {
        let t = Timestamp(253_402_300_800_000); // 10000-01-01
        assert_eq!(t.to_string(), "10000-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(i64::MAX).to_string(), i64::MAX.to_string());
        let body = envelope("evt_1", "open", Timestamp(1_000), "{}");
        assert_eq!(
            String::from_utf8(body).unwrap(),
            r#"{"id":"evt_1","type":"open","timestamp":"1970-01-01T00:00:01.000Z","data":{}}"#
        );
    }
}
