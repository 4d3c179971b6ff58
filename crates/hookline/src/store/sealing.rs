//! Endpoint secrets at rest — the signing secret, the ones rotated out, and
//! the values of the endpoint's own headers (which often carry a receiver's credentials) —
//! sealed with XChaCha20-Poly1305 when `HOOKLINE_ENCRYPTION_KEY` is set, stored as they are
//! otherwise.
//!
//! A sealed value reads `hlenc1:<key id>:<base64 of nonce ‖ ciphertext>`. The key id is the
//! first 8 hex digits of the key's SHA-256: it names the key without revealing it, so a
//! wrong or missing key is reported as such rather than as corruption. The endpoint's id is
//! the associated data, so a sealed secret copied into another endpoint's row does not open.
//! Each seal draws a fresh 24-byte random nonce (safe at any volume with XChaCha).
//!
//! Only the engines call this, when they write and read endpoint rows: every other layer
//! sees secrets in clear, and nothing outside the store ever sees the sealed form.

use super::StoreError;
use crate::model::{PreviousSecret, Timestamp};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

const PREFIX: &str = "hlenc1:";
const NONCE_LEN: usize = 24;

/// Seals and opens endpoint secrets; without a key it passes them through.
#[derive(Clone, Default)]
pub struct Sealer {
    key: Option<Key>,
}

#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "Sealer(key {})", k.id),
            None => write!(f, "Sealer(no key)"),
        }
    }
}

impl Sealer {
    /// No key: secrets are stored in clear.
    pub fn none() -> Self {
        Sealer { key: None }
    }

    /// A key given as base64 of 32 bytes (what `hookline keygen` prints).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("the encryption key is not base64 ({e})"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "the encryption key must be 32 bytes, this one is {}",
                b.len()
            )
        })?;
        Ok(Self::from_bytes(&bytes))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let digest = Sha256::digest(bytes);
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Sealer {
            key: Some(Key {
                id,
                cipher: XChaCha20Poly1305::new(bytes.into()),
            }),
        }
    }

    /// A new random key, as base64.
    pub fn generate_key() -> String {
        let bytes: [u8; 32] = rand::rng().random();
        STANDARD.encode(bytes)
    }

    /// The id of the key, if there is one.
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.id.as_str())
    }

    /// Whether `stored` is a sealed value (under any key).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// The stored form of an endpoint's headers: JSON of the map, each value sealed.
    pub fn seal_headers(
        &self,
        owner: &str,
        headers: &BTreeMap<String, String>,
    ) -> Result<String, StoreError> {
        let sealed = headers
            .iter()
            .map(|(k, v)| Ok((k.as_str(), self.seal(owner, v)?)))
            .collect::<Result<BTreeMap<_, _>, StoreError>>()?;
        serde_json::to_string(&sealed)
            .map_err(|e| StoreError::Sealing(format!("encoding the headers of {owner}: {e}")))
    }

    /// The stored form of an endpoint's rotated-out secrets (`previous_secrets`): JSON of
    /// `[{"secret": sealed, "until": ms}, …]`, newest first; `None` (SQL `NULL`) for none.
    pub fn seal_previous(
        &self,
        owner: &str,
        previous: &[PreviousSecret],
    ) -> Result<Option<String>, StoreError> {
        if previous.is_empty() {
            return Ok(None);
        }
        let stored = previous
            .iter()
            .map(|p| {
                Ok(StoredPrevious {
                    secret: self.seal(owner, &p.secret)?,
                    until: p.until.0,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        encode_previous(owner, &stored).map(Some)
    }

    /// Opens the rotated-out secrets read from their stored form.
    pub fn open_previous(
        &self,
        owner: &str,
        stored: Option<&str>,
    ) -> Result<Vec<PreviousSecret>, StoreError> {
        let Some(text) = stored else {
            return Ok(Vec::new());
        };
        decode_previous(owner, text)?
            .into_iter()
            .map(|p| {
                Ok(PreviousSecret {
                    secret: self.open(owner, &p.secret)?,
                    until: Timestamp(p.until),
                })
            })
            .collect()
    }

    /// Opens every value of headers read from their stored form.
    pub fn open_headers(
        &self,
        owner: &str,
        headers: &mut BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        for v in headers.values_mut() {
            *v = self.open(owner, v)?;
        }
        Ok(())
    }

    /// Whether `stored` is in the form this sealer writes: sealed under its key, or in
    /// clear when it has none.
    pub fn is_current(&self, stored: &str) -> bool {
        match &self.key {
            Some(k) => stored
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(id, _)| id == k.id),
            None => !Self::is_sealed(stored),
        }
    }

    /// The stored form of `secret`, which belongs to endpoint `owner`.
    pub fn seal(&self, owner: &str, secret: &str) -> Result<String, StoreError> {
        let Some(key) = &self.key else {
            return Ok(secret.to_owned());
        };
        let nonce: [u8; NONCE_LEN] = rand::rng().random();
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Sealing(format!("sealing the secret of {owner} failed")))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}:{}", key.id, STANDARD.encode(blob)))
    }

    /// The secret in clear from its stored form. A value stored in clear (before a key was
    /// set) passes through.
    pub fn open(&self, owner: &str, stored: &str) -> Result<String, StoreError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let fail = |why: String| StoreError::Sealing(format!("the secret of {owner}: {why}"));
        let (id, blob) = rest
            .split_once(':')
            .ok_or_else(|| fail("the sealed value is malformed".into()))?;
        let Some(key) = &self.key else {
            return Err(fail(format!(
                "it is encrypted under key {id} and HOOKLINE_ENCRYPTION_KEY is not set"
            )));
        };
        if key.id != id {
            return Err(fail(format!(
                "it is encrypted under key {id}, but HOOKLINE_ENCRYPTION_KEY is key {}",
                key.id
            )));
        }
        let blob = STANDARD
            .decode(blob)
            .map_err(|_| fail("the sealed value is not base64".into()))?;
        if blob.len() < NONCE_LEN {
            return Err(fail("the sealed value is truncated".into()));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let clear = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| {
                fail("it does not authenticate (altered, or moved from another row)".into())
            })?;
        String::from_utf8(clear).map_err(|_| fail("it is not text".into()))
    }
}

/// Checks the key the database records its secrets as sealed under (`""`: in clear)
/// against `sealer`, which is about to open them: refused when they differ, unless nothing
/// is recorded as sealed (clear values open under any sealer).
pub fn check_recorded_key(recorded: &str, sealer: &Sealer) -> Result<(), StoreError> {
    if recorded.is_empty() || sealer.key_id() == Some(recorded) {
        return Ok(());
    }
    Err(StoreError::Sealing(match sealer.key_id() {
        Some(mine) => format!(
            "the endpoint secrets are encrypted under key {recorded}, but \
             HOOKLINE_ENCRYPTION_KEY is key {mine}"
        ),
        None => format!(
            "the endpoint secrets are encrypted under key {recorded} and \
             HOOKLINE_ENCRYPTION_KEY is not set"
        ),
    }))
}

/// One rotated-out secret as stored, in the JSON list of `previous_secrets`.
#[derive(Serialize, Deserialize)]
struct StoredPrevious {
    /// Sealed.
    secret: String,
    /// Milliseconds since the epoch.
    until: i64,
}

fn encode_previous(owner: &str, stored: &[StoredPrevious]) -> Result<String, StoreError> {
    serde_json::to_string(stored)
        .map_err(|e| StoreError::Sealing(format!("encoding the previous secrets of {owner}: {e}")))
}

fn decode_previous(owner: &str, text: &str) -> Result<Vec<StoredPrevious>, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Sealing(format!(
            "the previous secrets of {owner} are not as stored: {e}"
        ))
    })
}

/// An endpoint row's sealed columns as stored: the secret, the rotated-out secrets (JSON,
/// each secret sealed), and the headers (JSON of the map, each value sealed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedColumns {
    pub secret: String,
    pub previous: Option<String>,
    pub headers: String,
}

/// One endpoint row's sealed columns as they should be stored under `to`, opened with
/// `from`. A value already sealed under `to` (or in clear when `to` has no key) is kept as
/// it is, after checking that it opens.
pub fn reseal_row(
    from: &Sealer,
    to: &Sealer,
    owner: &str,
    row: &SealedColumns,
) -> Result<SealedColumns, StoreError> {
    let one = |stored: &str| -> Result<String, StoreError> {
        if to.is_current(stored) {
            to.open(owner, stored)?;
            return Ok(stored.to_owned());
        }
        to.seal(owner, &from.open(owner, stored)?)
    };
    let headers: BTreeMap<String, String> = serde_json::from_str(&row.headers)
        .map_err(|e| StoreError::Sealing(format!("the headers of {owner} are not JSON: {e}")))?;
    let headers = headers
        .into_iter()
        .map(|(k, v)| Ok((k, one(&v)?)))
        .collect::<Result<BTreeMap<_, _>, StoreError>>()?;
    Ok(SealedColumns {
        secret: one(&row.secret)?,
        previous: row
            .previous
            .as_deref()
            .map(|text| {
                let stored = decode_previous(owner, text)?;
                let list = stored
                    .iter()
                    .map(|p| {
                        Ok(StoredPrevious {
                            secret: one(&p.secret)?,
                            until: p.until,
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                // Kept as it is when no secret changed, whatever its JSON's spacing (a
                // list PostgreSQL's migration wrote), so that it is not rewritten for nothing.
                if list
                    .iter()
                    .zip(&stored)
                    .all(|(new, old)| new.secret == old.secret)
                {
                    return Ok(text.to_owned());
                }
                encode_previous(owner, &list)
            })
            .transpose()?,
        headers: serde_json::to_string(&headers)
            .map_err(|e| StoreError::Sealing(format!("encoding the headers of {owner}: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::Sealer;

    #[test]
    fn round_trip_and_refusals() {
        let key = Sealer::generate_key();
        let s = Sealer::from_base64(&key).expect("valid key");
        let sealed = s.seal("ep_1", "whsec_abc").expect("seals");
        assert!(
            Sealer::is_sealed(&sealed) && !sealed.contains("whsec_abc"),
            "{sealed}"
        );
        assert_ne!(
            sealed,
            s.seal("ep_1", "whsec_abc").expect("seals"),
            "fresh nonce"
        );
        assert_eq!(s.open("ep_1", &sealed).expect("opens"), "whsec_abc");
        // Another row, another key, no key, a flipped byte: all refused with a reason.
        assert!(s.open("ep_2", &sealed).is_err());
        let other = Sealer::from_base64(&Sealer::generate_key()).expect("valid key");
        let e = other
            .open("ep_1", &sealed)
            .expect_err("wrong key")
            .to_string();
        assert!(e.contains("encrypted under key"), "{e}");
        assert!(Sealer::none().open("ep_1", &sealed).is_err());
        let mut bad = sealed.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(
            s.open("ep_1", &String::from_utf8(bad).expect("ascii"))
                .is_err()
        );
        // Clear values pass through; no key stores in clear.
        assert_eq!(s.open("ep_1", "whsec_x").expect("clear"), "whsec_x");
        assert_eq!(
            Sealer::none().seal("ep_1", "whsec_x").expect("clear"),
            "whsec_x"
        );
        assert!(Sealer::from_base64("c2hvcnQ=").is_err());
        assert!(Sealer::from_base64("not base64!").is_err());
    }

    /// A list of rotated-out secrets that needs no new seal is kept byte for byte, whatever
    /// its JSON's spacing (PostgreSQL's migration writes `"secret" : …`), so a start does not
    /// rewrite every migrated row; one that does is sealed, and opens to the same list.
    #[test]
    fn previous_secrets_are_rewritten_only_when_a_seal_changes() {
        use super::{SealedColumns, reseal_row};
        use crate::model::{PreviousSecret, Timestamp};
        let clear = Sealer::none();
        let row = SealedColumns {
            secret: "whsec_current".into(),
            previous: Some(r#"[{"secret" : "whsec_before", "until" : 5}]"#.into()),
            headers: "{}".into(),
        };
        assert_eq!(reseal_row(&clear, &clear, "ep_1", &row).unwrap(), row);
        let key = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        let sealed = reseal_row(&clear, &key, "ep_1", &row).unwrap();
        let text = sealed.previous.clone().unwrap();
        assert!(
            text.contains("hlenc1:") && !text.contains("whsec_before"),
            "{text}"
        );
        assert_eq!(
            key.open_previous("ep_1", Some(&text)).unwrap(),
            vec![PreviousSecret {
                secret: "whsec_before".into(),
                until: Timestamp(5)
            }]
        );
        assert_eq!(reseal_row(&key, &key, "ep_1", &sealed).unwrap(), sealed);
    }
}
