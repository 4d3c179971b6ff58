//! Standard Webhooks signatures, for Hookline and for the receivers of its webhooks.
//!
//! A webhook carries three headers:
//!
//! - `webhook-id`: the message id (a Hookline event id, the same on every retry);
//! - `webhook-timestamp`: Unix seconds at which this attempt was signed;
//! - `webhook-signature`: one or more space-separated `v1,<base64>` values, each the
//!   HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under one secret.
//!
//! A secret is written `whsec_<base64 of the key bytes>`. During a secret rotation the sender
//! signs with both the old and the new secret, so a receiver holding either one verifies.
//!
//! This crate has no async runtime and no I/O: [`Secret`], [`sign`] and [`Verifier`] are all
//! there is.
//!
//! A receiver checks a webhook like this:
//!
//! ```
//! use hookline_signing::{Secret, Verifier, sign};
//!
//! let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let body = br#"{"id":"evt_1","type":"click","timestamp":"2026-11-26T17:43:35.123Z","data":{}}"#;
//! // What Hookline sends in the `webhook-signature` header:
//! let header = sign([&secret], "evt_1", 1_764_179_015, body);
//!
//! let verifier = Verifier::new(vec![secret]);
//! // The receiver passes the three headers, the raw body and its own clock.
//! assert!(verifier.verify("evt_1", "1764179015", &header, body, 1_764_179_020).is_ok());
//! assert!(verifier.verify("evt_1", "1764179015", &header, b"{}", 1_764_179_020).is_err());
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// The shortest key Hookline generates or accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 24;
/// The longest key accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 64;
/// Default tolerance between a signature's timestamp and the receiver's clock, in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// A signing key.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
    /// HMAC's state after the key: every message signed starts from a copy of it, instead of
    /// hashing the key's two padded blocks again.
    keyed: HmacSha256,
}

/// Two secrets are equal when their keys are.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Secret {}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret's text was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The text does not start with `whsec_`.
    MissingPrefix,
    /// The part after `whsec_` is not standard base64.
    NotBase64,
    /// The key is shorter than [`MIN_SECRET_BYTES`] or longer than [`MAX_SECRET_BYTES`].
    BadLength(usize),
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::MissingPrefix => write!(f, "a secret must start with `{SECRET_PREFIX}`"),
            SecretError::NotBase64 => write!(f, "the part after `{SECRET_PREFIX}` must be base64"),
            SecretError::BadLength(n) => write!(
                f,
                "a secret's key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, this one is {n}"
            ),
        }
    }
}

impl std::error::Error for SecretError {}

impl Secret {
    /// A secret from raw key bytes (for example fresh random bytes).
    pub fn from_bytes(key: &[u8]) -> Result<Self, SecretError> {
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SecretError::BadLength(key.len()));
        }
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let keyed = match HmacSha256::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        Ok(Secret {
            key: key.to_vec(),
            keyed,
        })
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::MissingPrefix)?;
        let key = B64.decode(b64).map_err(|_| SecretError::NotBase64)?;
        Self::from_bytes(&key)
    }

    /// The key bytes.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl std::fmt::Display for Secret {
    /// The `whsec_…` text form. Careful: this is the secret itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", B64.encode(&self.key))
    }
}

/// The `webhook-signature` header value for `body`, signed with every secret given
/// (normally one; two during a rotation), space-separated.
pub fn sign<'a>(
    secrets: impl IntoIterator<Item = &'a Secret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut out = String::new();
    for secret in secrets {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        let tag = secret.mac(msg_id, timestamp, body).finalize().into_bytes();
        B64.encode_string(tag, &mut out);
    }
    out
}

/// Why a webhook was refused by [`Verifier::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// `webhook-timestamp` is not an integer.
    BadTimestamp,
    /// The timestamp is further from now than the tolerance.
    TimestampOutOfTolerance,
    /// No `v1,` signature in the header matches.
    NoMatchingSignature,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerifyError::BadTimestamp => "webhook-timestamp is not a Unix time in seconds",
            VerifyError::TimestampOutOfTolerance => "webhook-timestamp is too far from now",
            VerifyError::NoMatchingSignature => "no signature matches",
        })
    }
}

impl std::error::Error for VerifyError {}

/// The receiver's side: checks the headers of a webhook against one or more secrets.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance_secs: i64,
}

impl Verifier {
    /// A verifier accepting a signature by any of `secrets`.
    pub fn new(secrets: Vec<Secret>) -> Self {
        Verifier {
            secrets,
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        }
    }

    /// Changes the accepted clock difference (default five minutes).
    pub fn with_tolerance(mut self, secs: i64) -> Self {
        self.tolerance_secs = secs;
        self
    }

    /// Checks one webhook. `now` is the receiver's Unix time in seconds.
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        // The timestamp is not authenticated yet: any i64 (`abs_diff` cannot overflow).
        if now.abs_diff(ts) > u64::try_from(self.tolerance_secs).unwrap_or(0) {
            return Err(VerifyError::TimestampOutOfTolerance);
        }
        let candidates: Vec<Vec<u8>> = signature_header
            .split(' ')
            .filter_map(|c| c.strip_prefix("v1,"))
            .filter_map(|b64| B64.decode(b64).ok())
            .collect();
        for secret in &self.secrets {
            // One MAC per secret, compared with every candidate in constant time.
            let tag = secret.mac(msg_id, ts, body).finalize().into_bytes();
            if candidates
                .iter()
                .any(|c| bool::from(c.as_slice().ct_eq(tag.as_slice())))
            {
                return Ok(());
            }
        }
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> Secret {
        Secret::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn parse_round_trips_and_refuses_bad_text() {
        let s = secret(7);
        assert_eq!(Secret::parse(&s.to_string()).unwrap(), s);
        assert_eq!(Secret::parse("abc"), Err(SecretError::MissingPrefix));
        assert_eq!(Secret::parse("whsec_!!!"), Err(SecretError::NotBase64));
        assert_eq!(Secret::parse("whsec_AAAA"), Err(SecretError::BadLength(3)));
    }

    #[test]
    fn own_verifier_accepts_own_signature_and_rejects_tampering() {
        let s = secret(1);
        let sig = sign([&s], "evt_1", 1_700_000_000, b"{}");
        let v = Verifier::new(vec![s]);
        assert_eq!(
            v.verify("evt_1", "1700000000", &sig, b"{}", 1_700_000_010),
            Ok(())
        );
        assert_eq!(
            v.verify("evt_1", "1700000000", &sig, b"{ }", 1_700_000_010),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            v.verify("evt_2", "1700000000", &sig, b"{}", 1_700_000_010),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            v.verify("evt_1", "1700000000", &sig, b"{}", 1_700_001_000),
            Err(VerifyError::TimestampOutOfTolerance)
        );
        assert_eq!(
            v.verify("evt_1", "soon", &sig, b"{}", 1_700_000_000),
            Err(VerifyError::BadTimestamp)
        );
        // A hostile timestamp at either end of i64 is refused, not an overflow.
        for ts in [i64::MIN, i64::MAX] {
            assert_eq!(
                v.verify("evt_1", &ts.to_string(), &sig, b"{}", 1_700_000_000),
                Err(VerifyError::TimestampOutOfTolerance)
            );
        }
    }

    #[test]
    fn two_secrets_sign_twice_and_each_alone_verifies() {
        let (old, new) = (secret(1), secret(2));
        let sig = sign([&old, &new], "evt_1", 1_700_000_000, b"body");
        assert_eq!(sig.split(' ').count(), 2);
        for s in [old, new] {
            assert_eq!(
                Verifier::new(vec![s]).verify("evt_1", "1700000000", &sig, b"body", 1_700_000_000),
                Ok(())
            );
        }
    }

    /// The independent `standardwebhooks` crate, as a receiver would use it, accepts our
    /// signatures, including both halves of a rotation header.
    #[test]
    fn standardwebhooks_crate_accepts_our_signatures() {
        let (old, new) = (secret(3), secret(4));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let body =
            br#"{"id":"evt_x","type":"click","timestamp":"2026-11-26T17:43:35.123Z","data":{}}"#;
        let sig = sign([&old, &new], "evt_x", now, body);
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "evt_x".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", sig.parse().unwrap());
        for s in [&old, &new] {
            let wh = standardwebhooks::Webhook::new(&s.to_string()).unwrap();
            wh.verify(body, &headers).unwrap();
        }
        let stranger = standardwebhooks::Webhook::new(&secret(5).to_string()).unwrap();
        assert!(stranger.verify(body, &headers).is_err());
    }
}
