//! Secrets at rest and in transit through the process: AES-256-GCM for upstream keys, SHA-256 for
//! access keys, argon2id for passwords, masking for display. Nothing here logs or prints a secret.
use aes_gcm::aead::{Aead, Generate, Key, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use sha2::{Digest, Sha256};

const CIPHER_PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// Encrypts upstream key secrets before they reach the database.
#[derive(Clone)]
pub struct Cipher(Aes256Gcm);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("encryption key must be 32 bytes as base64 or 64 hex characters")]
    BadKey,
    #[error("stored secret could not be decrypted (wrong KEYGATE_ENCRYPTION_KEY?)")]
    Decrypt,
}

impl Cipher {
    /// Parses a 32-byte key given as 64 hex characters or base64.
    pub fn from_encoded(encoded: &str) -> Result<Self, CryptoError> {
        let s = encoded.trim();
        let bytes = if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            hex::decode(s).map_err(|_| CryptoError::BadKey)?
        } else {
            B64.decode(s).map_err(|_| CryptoError::BadKey)?
        };
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let key = Key::<Aes256Gcm>::try_from(bytes.as_slice()).map_err(|_| CryptoError::BadKey)?;
        Ok(Self(Aes256Gcm::new(&key)))
    }

    /// A fresh random key, base64-encoded (what the embedded default writes beside the database).
    pub fn generate_encoded() -> String {
        B64.encode(Key::<Aes256Gcm>::generate())
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let nonce = Nonce::generate();
        let ct = self
            .0
            .encrypt(&nonce, plaintext.as_bytes())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        format!("{CIPHER_PREFIX}{}", B64.encode(out))
    }

    pub fn decrypt(&self, stored: &str) -> Result<String, CryptoError> {
        let raw = stored
            .strip_prefix(CIPHER_PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .filter(|r| r.len() > NONCE_LEN)
            .ok_or(CryptoError::Decrypt)?;
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Decrypt)?;
        let pt = self
            .0
            .decrypt(&nonce, ct)
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Decrypt)
    }
}

/// Hex SHA-256: the stored form of access keys, and the dedup fingerprint of upstream keys.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// `sk-ab...wxyz`: enough to recognise a key, never enough to use it.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 12 {
        let head: String = chars[..5].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}...{tail}")
    } else {
        let tail: String = chars[chars.len().saturating_sub(2)..].iter().collect();
        format!("...{tail}")
    }
}

/// A new access key (`kg-` + 40 random alphanumerics) and its display prefix.
pub fn new_access_key() -> (String, String) {
    let body: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    let key = format!("kg-{body}");
    let prefix = key[..8].to_string();
    (key, prefix)
}

/// A random password or secret of `len` alphanumerics.
pub fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypts_and_decrypts_round_trip_with_fresh_nonces() {
        let c = Cipher::from_encoded(&Cipher::generate_encoded()).unwrap();
        let a = c.encrypt("sk-secret-value");
        let b = c.encrypt("sk-secret-value");
        assert_ne!(a, b, "nonce must differ per message");
        assert!(!a.contains("sk-secret"));
        assert_eq!(c.decrypt(&a).unwrap(), "sk-secret-value");
    }

    #[test]
    fn wrong_key_cannot_decrypt() {
        let a = Cipher::from_encoded(&Cipher::generate_encoded()).unwrap();
        let b = Cipher::from_encoded(&Cipher::generate_encoded()).unwrap();
        assert!(b.decrypt(&a.encrypt("x")).is_err());
        assert!(a.decrypt("garbage").is_err());
    }

    #[test]
    fn accepts_hex_and_rejects_short_keys() {
        assert!(Cipher::from_encoded(&"ab".repeat(32)).is_ok());
        assert!(Cipher::from_encoded("c2hvcnQ=").is_err());
    }

    #[test]
    fn masks_keys_for_display() {
        assert_eq!(mask("sk-abcdefghijklmnopwxyz"), "sk-ab...wxyz");
        assert_eq!(mask("short"), "...rt");
    }

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not-a-hash"));
    }
}
