//! The token format of the token format and the keyed hash of secrets.
//!
//! A token is `<prefix>_<key id>_<secret><checksum>`: a configurable prefix, a 20-character
//! base62 key id, a 22-character base62 secret (131 bits from the OS CSPRNG) and a
//! 6-character base62 CRC32 of everything before it, so look-alikes are rejected offline.
//! Only HMAC-SHA256(pepper, key id `:` secret) is ever stored; comparison is constant-time.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{error::Problem, ids::KeyId, limits};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of the secret: 22 base62 characters carry 131 bits.
pub const SECRET_LEN: usize = 22;
/// Characters of the checksum: 62^6 > 2^32.
pub const CHECKSUM_LEN: usize = 6;
const PREFIX_MAX: usize = 16;

/// Text that must never be shown: its `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret text, for the one place that must show or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The secret part of a token (checksum excluded): [`SECRET_LEN`] base62 characters, held
/// inline, so parsing a presented token costs no allocation for it. Never shown: its `Debug`
/// prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret([u8; SECRET_LEN]);

impl TokenSecret {
    /// `text` as a token's secret part, when it has the right length and alphabet.
    fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; SECRET_LEN] = text.as_bytes().try_into().ok()?;
        bytes.iter().all(u8::is_ascii_alphanumeric).then_some(TokenSecret(bytes))
    }

    /// The secret text, for the one place that must show or send it.
    pub fn expose(&self) -> &str {
        // Only base62 bytes are ever held (see `parse`), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret([redacted])")
    }
}

/// A well-formed credential: the key id and its secret, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The key it names.
    pub key_id: KeyId,
    /// The secret part, checksum excluded.
    pub secret: TokenSecret,
}

/// The token shape of one deployment (its prefix).
#[derive(Debug, Clone)]
pub struct TokenFormat {
    prefix: String,
}

/// Why a credential is not a keyscope token. Deliberately vague: the credential is never
/// echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the credential is not a well-formed keyscope token")]
pub struct Malformed;

/// The OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the OS random source failed: {0}")]
pub struct RandomError(String);

pub(crate) fn random_base62(len: usize) -> Result<String, RandomError> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| RandomError(e.to_string()))?;
        // Rejection sampling keeps every character equally likely: 248 = 4 * 62.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(char::from(BASE62[usize::from(b % 62)]));
        }
    }
    Ok(out)
}

fn checksum(body: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

impl TokenFormat {
    /// A format with the given prefix: 1 to 16 characters `[a-z0-9]`.
    pub fn new(prefix: &str) -> Result<Self, Problem> {
        let ok = !prefix.is_empty()
            && prefix.len() <= PREFIX_MAX
            && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(Problem::new(format!(
                "`{}` is not a token prefix (1 to {PREFIX_MAX} characters [a-z0-9])",
                super::ids::shorten(prefix)
            )));
        }
        Ok(TokenFormat { prefix: prefix.to_owned() })
    }

    /// The prefix tokens start with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A fresh random key id.
    pub fn new_key_id(&self) -> Result<KeyId, RandomError> {
        random_base62(KeyId::LEN).map(KeyId::from_generated)
    }

    /// A fresh secret for `key_id`: the parsed token and its full text.
    pub fn issue(&self, key_id: &KeyId) -> Result<(Token, Secret), RandomError> {
        let secret = random_base62(SECRET_LEN)?;
        let mut text = format!("{}_{}_{}", self.prefix, key_id, secret);
        let sum = checksum(&text);
        text.extend(sum.iter().map(|&b| char::from(b)));
        let secret = TokenSecret::parse(&secret).ok_or_else(|| RandomError("not a base62 secret".to_owned()))?;
        Ok((Token { key_id: key_id.clone(), secret }, Secret(text)))
    }

    /// Parses a whole token, checksum included, without consulting any store.
    pub fn parse(&self, text: &str) -> Result<Token, Malformed> {
        if text.len() > limits::TOKEN_MAX {
            return Err(Malformed);
        }
        let rest = text.strip_prefix(self.prefix.as_str()).and_then(|r| r.strip_prefix('_')).ok_or(Malformed)?;
        let (id, tail) = rest.split_once('_').ok_or(Malformed)?;
        if tail.len() != SECRET_LEN + CHECKSUM_LEN || !tail.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Malformed);
        }
        let (secret, sum) = tail.split_at(SECRET_LEN);
        let body_len = text.len() - CHECKSUM_LEN;
        if checksum(&text[..body_len]).as_slice() != sum.as_bytes() {
            return Err(Malformed);
        }
        let secret = TokenSecret::parse(secret).ok_or(Malformed)?;
        let key_id: KeyId = id.parse().map_err(|_| Malformed)?;
        Ok(Token { key_id, secret })
    }

    /// Parses a key id and secret presented separately; the secret is the token's last part
    /// (secret and checksum).
    pub fn parse_pair(&self, key_id: &str, secret: &str) -> Result<Token, Malformed> {
        if key_id.len() + secret.len() > limits::TOKEN_MAX {
            return Err(Malformed);
        }
        self.parse(&format!("{}_{}_{}", self.prefix, key_id, secret))
    }
}

/// The stored form of a secret: 32 bytes of HMAC-SHA256.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// A hash read back from storage.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretHash(bytes)
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash([redacted])")
    }
}

/// The server-side key of the secret hashes. Keyed once; each hash clones the keyed state.
#[derive(Clone)]
pub struct Pepper {
    mac: Hmac<Sha256>,
    /// Compared against when the key is unknown, so that costs what a wrong secret costs.
    decoy: SecretHash,
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper([redacted])")
    }
}

impl Pepper {
    /// Shortest accepted pepper, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A pepper from configured bytes (at least [`Pepper::MIN_LEN`]).
    pub fn new(bytes: &[u8]) -> Result<Self, Problem> {
        if bytes.len() < Self::MIN_LEN {
            return Err(Problem::new(format!("must be at least {} bytes", Self::MIN_LEN)));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(bytes).map_err(|e| Problem::new(e.to_string()))?;
        let mut pepper = Pepper { mac, decoy: SecretHash([0; 32]) };
        pepper.decoy = pepper.mac_of(&KeyId::from_generated("0".repeat(KeyId::LEN)), b"");
        Ok(pepper)
    }

    /// The stored form of `secret` for `key_id`.
    pub fn hash(&self, key_id: &KeyId, secret: &TokenSecret) -> SecretHash {
        self.mac_of(key_id, &secret.0)
    }

    fn mac_of(&self, key_id: &KeyId, secret: &[u8]) -> SecretHash {
        let mut mac = self.mac.clone();
        mac.update(key_id.as_str().as_bytes());
        mac.update(b":");
        mac.update(secret);
        SecretHash(mac.finalize().into_bytes().into())
    }

    /// Whether `token` matches `stored`, in constant time. With no stored hash (unknown key)
    /// the same work is done against a decoy and the answer is `false`.
    pub fn verify(&self, token: &Token, stored: Option<&SecretHash>) -> bool {
        self.verify_rotated(token, stored, None)
    }

    /// Whether `token` matches `current` or, during a rotation's grace period, `previous`, in
    /// constant time: the token is hashed once and compared with both (with the decoy where
    /// one is missing), with no early exit, so neither the timing nor the answer tells which
    /// secret matched.
    pub fn verify_rotated(&self, token: &Token, current: Option<&SecretHash>, previous: Option<&SecretHash>) -> bool {
        let computed = self.hash(&token.key_id, &token.secret);
        let side = |stored: Option<&SecretHash>| {
            let against = stored.unwrap_or(&self.decoy);
            computed.0.ct_eq(&against.0) & subtle::Choice::from(u8::from(stored.is_some()))
        };
        let now = side(current);
        let before = side(previous);
        (now | before).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> TokenFormat {
        TokenFormat::new("ks").expect("valid prefix")
    }

    #[test]
    fn issued_tokens_parse_back_to_their_key_and_secret() {
        let f = format();
        let id = f.new_key_id().expect("random");
        let (token, text) = f.issue(&id).expect("random");
        assert!(text.expose().starts_with(&format!("ks_{id}_")));
        assert_eq!(text.expose().len(), 3 + KeyId::LEN + 1 + SECRET_LEN + CHECKSUM_LEN);
        assert_eq!(f.parse(text.expose()), Ok(token.clone()));
        let (_, tail) = text.expose().rsplit_once('_').expect("separator");
        assert_eq!(f.parse_pair(id.as_str(), tail), Ok(token));
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let f = format();
        let (_, text) = f.issue(&f.new_key_id().expect("random")).expect("random");
        let mut bytes = text.expose().as_bytes().to_vec();
        let i = bytes.len() - CHECKSUM_LEN - 1;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(f.parse(std::str::from_utf8(&bytes).expect("ascii")), Err(Malformed));
    }

    #[test]
    fn look_alikes_are_malformed() {
        let f = format();
        let (_, text) = f.issue(&f.new_key_id().expect("random")).expect("random");
        let other = TokenFormat::new("xx").expect("valid prefix");
        assert_eq!(other.parse(text.expose()), Err(Malformed));
        for bad in ["", "ks", "ks_", "ks__", "ks_abc_def", &"ks_".repeat(200), "ks_ééééééééééééééééééé_x"]
        {
            assert_eq!(f.parse(bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_distinct_and_base62() {
        let f = format();
        let id = f.new_key_id().expect("random");
        let (a, _) = f.issue(&id).expect("random");
        let (b, _) = f.issue(&id).expect("random");
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn verify_accepts_only_the_right_secret() {
        let f = format();
        let pepper = Pepper::new(b"0123456789abcdef").expect("pepper");
        let id = f.new_key_id().expect("random");
        let (good, _) = f.issue(&id).expect("random");
        let (bad, _) = f.issue(&id).expect("random");
        let stored = pepper.hash(&id, &good.secret);
        assert!(pepper.verify(&good, Some(&stored)));
        assert!(!pepper.verify(&bad, Some(&stored)));
        assert!(!pepper.verify(&good, None));
        let other_hash = SecretHash([7; 32]);
        assert!(pepper.verify_rotated(&good, Some(&other_hash), Some(&stored)));
        assert!(pepper.verify_rotated(&good, Some(&stored), Some(&other_hash)));
        assert!(!pepper.verify_rotated(&bad, Some(&stored), Some(&stored)));
        assert!(!pepper.verify_rotated(&good, None, None));
        assert!(!pepper.verify_rotated(&good, Some(&other_hash), None));
        let other = Pepper::new(b"another pepper value").expect("pepper");
        assert!(!other.verify(&good, Some(&stored)));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let f = format();
        let (token, text) = f.issue(&f.new_key_id().expect("random")).expect("random");
        let shown = format!("{token:?} {text:?} {text}");
        assert!(!shown.contains(token.secret.expose()));
        assert!(!shown.contains(text.expose()));
    }

    #[test]
    fn short_peppers_are_refused() {
        assert!(Pepper::new(b"short").is_err());
    }
}
