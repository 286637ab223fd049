//! Secrets at rest and in transit through the process: AES-256-GCM for upstream keys, SHA-256 for
//! access keys, argon2id for passwords, masking for display. Nothing here logs or prints a secret.
use aes_gcm::aead::{Aead, Generate, Key, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::Rng;
use sha2::{Digest, Sha256};

/// Ciphertexts written before key ids: `v1:<base64 nonce+ct>`, tried with every configured key.
const LEGACY_PREFIX: &str = "v1:";
/// `v2:<key id>:<base64 nonce+ct>`: the key id names which configured key encrypted it.
const PREFIX: &str = "v2:";
const NONCE_LEN: usize = 12;
/// Upstream key fingerprints: `h1:` + hex HMAC-SHA256 under a key derived from the encryption key.
const FINGERPRINT_PREFIX: &str = "h1:";

/// One encryption key and its id (the first 8 hex digits of a hash of it: names it in
/// ciphertexts without revealing it).
#[derive(Clone)]
struct SealKey {
    id: String,
    aead: Aes256Gcm,
}

impl SealKey {
    fn parse(encoded: &str) -> Result<(Self, Vec<u8>), CryptoError> {
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
        let mut h = Sha256::new();
        h.update(b"keygate-key-id\0");
        h.update(&bytes);
        let id = hex::encode(h.finalize())[..8].to_string();
        Ok((
            Self {
                id,
                aead: Aes256Gcm::new(&key),
            },
            bytes,
        ))
    }

    fn open(&self, raw: &[u8]) -> Result<String, CryptoError> {
        if raw.len() <= NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Decrypt)?;
        let pt = self
            .aead
            .decrypt(&nonce, ct)
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Decrypt)
    }
}

/// Encrypts upstream key secrets before they reach the database, with the current key; decrypts
/// with whichever configured key (current or previous) a ciphertext names. Also keys the
/// fingerprints that find duplicate upstream keys.
#[derive(Clone)]
pub struct Cipher {
    current: SealKey,
    previous: Vec<SealKey>,
    /// HMAC key for fingerprints, derived (HKDF-SHA256) from the current encryption key.
    fingerprint_key: [u8; 32],
}

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
        let (current, bytes) = SealKey::parse(encoded)?;
        let mut fingerprint_key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(b"keygate-fingerprint"), &bytes)
            .expand(b"upstream key fingerprint v1", &mut fingerprint_key)
            .map_err(|_| CryptoError::BadKey)?;
        Ok(Self {
            current,
            previous: Vec::new(),
            fingerprint_key,
        })
    }

    /// Adds keys that only decrypt (the ones rotated out, until `rotate-encryption-key` has
    /// re-encrypted everything they sealed).
    pub fn with_previous<'a>(
        mut self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, CryptoError> {
        for k in keys {
            let (key, _) = SealKey::parse(k)?;
            if key.id != self.current.id && !self.previous.iter().any(|p| p.id == key.id) {
                self.previous.push(key);
            }
        }
        Ok(self)
    }

    /// The id of the key new ciphertexts are sealed with.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// A fresh random key, base64-encoded (what the embedded default writes beside the database).
    pub fn generate_encoded() -> String {
        B64.encode(Key::<Aes256Gcm>::generate())
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let nonce = Nonce::generate();
        let ct = self
            .current
            .aead
            .encrypt(&nonce, plaintext.as_bytes())
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        format!("{PREFIX}{}:{}", self.current.id, B64.encode(out))
    }

    pub fn decrypt(&self, stored: &str) -> Result<String, CryptoError> {
        if let Some(rest) = stored.strip_prefix(PREFIX) {
            let (id, b64) = rest.split_once(':').ok_or(CryptoError::Decrypt)?;
            let raw = B64.decode(b64).map_err(|_| CryptoError::Decrypt)?;
            return self
                .keys()
                .find(|k| k.id == id)
                .ok_or(CryptoError::Decrypt)?
                .open(&raw);
        }
        let raw = stored
            .strip_prefix(LEGACY_PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .ok_or(CryptoError::Decrypt)?;
        self.keys()
            .find_map(|k| k.open(&raw).ok())
            .ok_or(CryptoError::Decrypt)
    }

    /// Whether `stored` is sealed with the current key (rotation skips it).
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once(':'))
            .is_some_and(|(id, _)| id == self.current.id)
    }

    fn keys(&self) -> impl Iterator<Item = &SealKey> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    /// The fingerprint an upstream key is deduplicated by: keyed, so the database alone does not
    /// let anyone test guesses against it (an unsalted hash of a short key is found in seconds).
    pub fn fingerprint(&self, secret: &str) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.fingerprint_key)
            .expect("HMAC takes a key of any length");
        mac.update(secret.as_bytes());
        format!(
            "{FINGERPRINT_PREFIX}{}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// Whether a stored fingerprint is of the current scheme and key.
    pub fn is_current_fingerprint(&self, fp: &str, secret: &str) -> bool {
        fp.starts_with(FINGERPRINT_PREFIX) && fp == self.fingerprint(secret)
    }
}

/// Whether `stored` is a ciphertext (of either format) rather than a plain value.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX) || stored.starts_with(LEGACY_PREFIX)
}

/// Hex SHA-256: the stored form of access keys (40 random characters: a keyless hash is safe).
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// `sk-a...wxyz`: enough to recognise a key, never enough to use it: at most a third of it is
/// shown, and never more than 4 characters at either end.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let shown = chars.len() / 3;
    let head = (shown / 2).min(4);
    let tail = (shown - head).min(4);
    let h: String = chars[..head].iter().collect();
    let t: String = chars[chars.len() - tail..].iter().collect();
    format!("{h}...{t}")
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
    fn masks_show_at_most_a_third_of_a_key_and_four_characters_at_each_end() {
        assert_eq!(mask("sk-abcdefghijklmnopwxyz"), "sk-...wxyz");
        assert_eq!(
            mask("sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCDEF"),
            "sk-p...CDEF"
        );
        assert_eq!(mask("short"), "...t");
        assert_eq!(mask("ab"), "...");
        for n in 0..120 {
            let key: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            let shown = mask(&key).chars().filter(|c| *c != '.').count();
            assert!(shown * 3 <= n, "{n}: {}", mask(&key));
            let (h, t) = mask(&key)
                .split_once("...")
                .map(|(h, t)| (h.len(), t.len()))
                .unwrap();
            assert!(h <= 4 && t <= 4);
        }
    }

    #[test]
    fn ciphertexts_name_their_key_and_previous_keys_still_decrypt() {
        let old_key = Cipher::generate_encoded();
        let old = Cipher::from_encoded(&old_key).unwrap();
        let sealed_old = old.encrypt("sk-secret");
        let new = Cipher::from_encoded(&Cipher::generate_encoded()).unwrap();
        assert!(
            new.decrypt(&sealed_old).is_err(),
            "the new key alone cannot open it"
        );
        let both = new.clone().with_previous([old_key.as_str()]).unwrap();
        assert_eq!(both.decrypt(&sealed_old).unwrap(), "sk-secret");
        assert!(!both.is_current(&sealed_old));
        let sealed_new = both.encrypt("sk-secret");
        assert!(sealed_new.starts_with(&format!("v2:{}:", both.key_id())));
        assert!(both.is_current(&sealed_new));
        assert_eq!(both.decrypt(&sealed_new).unwrap(), "sk-secret");
    }

    #[test]
    fn fingerprints_are_keyed_so_the_database_alone_cannot_test_guesses() {
        let a = Cipher::from_encoded(&Cipher::generate_encoded()).unwrap();
        let b = Cipher::from_encoded(&Cipher::generate_encoded()).unwrap();
        assert_eq!(a.fingerprint("sk-1"), a.fingerprint("sk-1"));
        assert_ne!(a.fingerprint("sk-1"), b.fingerprint("sk-1"));
        assert_ne!(a.fingerprint("sk-1"), format!("h1:{}", sha256_hex("sk-1")));
        assert!(a.is_current_fingerprint(&a.fingerprint("sk-1"), "sk-1"));
        assert!(!a.is_current_fingerprint(&sha256_hex("sk-1"), "sk-1"));
    }

    #[test]
    fn legacy_ciphertexts_without_a_key_id_still_decrypt() {
        let key = Cipher::generate_encoded();
        let c = Cipher::from_encoded(&key).unwrap();
        let sealed = c.encrypt("sk-legacy");
        let (_, b64) = sealed.strip_prefix("v2:").unwrap().split_once(':').unwrap();
        assert_eq!(c.decrypt(&format!("v1:{b64}")).unwrap(), "sk-legacy");
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
