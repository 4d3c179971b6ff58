//! Accounts and their API keys.
//!
//! A key is `hk_` followed by 32 random bytes in URL-safe base64. It is shown once; the store
//! keeps only its SHA-256 (a fast hash is right for 256 random bits: there is nothing to
//! brute-force) and its first characters, to tell keys apart in listings. A presented key is
//! looked up by its hash, so the comparison never touches the key itself: timing reveals at
//! most something about a hash nobody can invert. Keys are revoked, never deleted, so a
//! listing shows what existed and when it stopped.

use crate::model::{Account, ApiKey, Plan};
use crate::store::{Store, StoreError};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt as _;
use sha2::{Digest, Sha256};

/// The stored form of an API key: lowercase hex SHA-256.
pub fn hash_api_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        out.push(char::from_digit((b & 0xf) as u32, 16).unwrap_or('0'));
    }
    out
}

fn generate_key() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("hk_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Creates an account and its first key. Returns the account and the raw key.
pub async fn create(
    store: &Store,
    name: &str,
    plan: Plan,
) -> Result<(Account, String), StoreError> {
    let (account, _, key) = create_with_record(store, name, plan).await?;
    Ok((account, key))
}

/// Like [`create`], with the stored record of the key too.
pub async fn create_with_record(
    store: &Store,
    name: &str,
    plan: Plan,
) -> Result<(Account, ApiKey, String), StoreError> {
    let name = check_name(name).map_err(StoreError::Conflict)?;
    let key = generate_key();
    let prefix: String = key.chars().take(10).collect();
    // The account and its key in one transaction: a failed key leaves no account without
    // one, whose name a retry would then find taken.
    let (account, record) = store
        .create_account_with_key(name.to_owned(), plan, hash_api_key(&key), prefix)
        .await?;
    Ok((account, record, key))
}

/// An account name, trimmed: 1 to 200 characters, no control characters.
pub fn check_name(name: &str) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err("an account name must be 1 to 200 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("an account name must not contain control characters".into());
    }
    Ok(name)
}

/// Issues one more key for the account named `name`; `None` when there is none.
pub async fn issue_key(store: &Store, name: &str) -> Result<Option<(Account, String)>, StoreError> {
    let Some(account) = store.account_by_name(name.trim().to_owned()).await? else {
        return Ok(None);
    };
    let (_, key) = issue_key_for(store, &account.id).await?;
    Ok(Some((account, key)))
}

/// Issues a key for `account_id`: its record, and the key itself (to show once).
pub async fn issue_key_for(
    store: &Store,
    account_id: &str,
) -> Result<(ApiKey, String), StoreError> {
    let key = generate_key();
    let prefix: String = key.chars().take(10).collect();
    let record = store
        .add_api_key(
            account_id.to_owned(),
            hash_api_key(&key),
            prefix,
            MAX_LIVE_KEYS,
        )
        .await?;
    Ok((record, key))
}

/// The most live keys an account may hold at once.
pub const MAX_LIVE_KEYS: usize = 50;

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_long_random_and_hash_to_hex() {
        let (a, b) = (super::generate_key(), super::generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with("hk_") && a.len() == 3 + 43, "{a}");
        let h = super::hash_api_key(&a);
        assert_eq!(h.len(), 64);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(h, super::hash_api_key(&b));
    }
}
