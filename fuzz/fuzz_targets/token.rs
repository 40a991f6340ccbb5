//! The token format (`TokenFormat::parse`, `parse_pair`, `issue`): never panics on any input,
//! and what parses is exactly what the format says (README, "Tokens and secrets"), checked against an
//! independent model of the checksum.
#![no_main]

use keyscope::domain::{KeyId, TokenFormat};
use libfuzzer_sys::fuzz_target;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const ID_LEN: usize = 20;
const SECRET_LEN: usize = 22;
const SUM_LEN: usize = 6;

/// CRC-32 (IEEE, reflected), bit by bit: a model independent of the crate keyscope uses.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The checksum of the token format: the CRC-32 of the body in 6 base62 digits, most
/// significant first.
fn checksum(body: &str) -> String {
    let mut n = u64::from(crc32(body.as_bytes()));
    let mut out = [b'0'; SUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("base62 is ascii")
}

fn base62_from(bytes: &[u8], len: usize) -> String {
    (0..len).map(|i| char::from(BASE62[usize::from(bytes.get(i).copied().unwrap_or(0)) % 62])).collect()
}

/// Everything a successful parse promises about `text`.
fn check_parsed(format: &TokenFormat, text: &str) {
    let Ok(token) = format.parse(text) else { return };
    let id = token.key_id.as_str();
    let secret = token.secret.expose();
    assert_eq!(id.len(), ID_LEN);
    assert_eq!(secret.len(), SECRET_LEN);
    assert!(id.bytes().chain(secret.bytes()).all(|b| b.is_ascii_alphanumeric()));
    assert!(id.parse::<KeyId>().is_ok());
    // The text is exactly prefix, id, secret and the checksum of what precedes it.
    let body = format!("{}_{id}_{secret}", format.prefix());
    let sum = checksum(&body);
    assert_eq!(text, format!("{body}{sum}"), "a parsed token re-serialises identically");
    // The same credential presented as a pair parses to the same token.
    assert_eq!(format.parse_pair(id, &format!("{secret}{sum}")), Ok(token.clone()));
    // The secret never shows in Debug output.
    assert!(!format!("{token:?}").contains(secret));
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let prefix = match selector % 4 {
        0 => "ks".to_owned(),
        1 => "k".to_owned(),
        2 => "0123456789abcdef".to_owned(),
        // A prefix from the input itself (TokenFormat::new must refuse bad ones, not panic).
        _ => String::from_utf8_lossy(&rest[..rest.len().min(20)]).into_owned(),
    };
    let Ok(format) = TokenFormat::new(&prefix) else { return };
    let text = String::from_utf8_lossy(rest);

    // 1. Arbitrary text: parse never panics, and whatever parses round-trips.
    check_parsed(&format, &text);
    // parse_pair: the key id is the one given, and the pair agrees with the whole token.
    if let Some((id, secret)) = text.split_once('\n') {
        if let Ok(token) = format.parse_pair(id, secret) {
            assert_eq!(token.key_id.as_str(), id);
            assert_eq!(format.parse(&format!("{}_{id}_{secret}", format.prefix())), Ok(token));
        }
    }

    // 2. A token built from the input by the format's rules parses back to its key id and
    // secret; changing any one byte of it makes it malformed (CRC-32 catches every burst of
    // up to 32 bits, so every single-byte change).
    let id = base62_from(rest, ID_LEN);
    let secret = base62_from(rest.get(ID_LEN..).unwrap_or_default(), SECRET_LEN);
    let body = format!("{}_{id}_{secret}", format.prefix());
    let built = format!("{body}{}", checksum(&body));
    let token = format.parse(&built).expect("a token built by the format's rules parses");
    assert_eq!(token.key_id.as_str(), id);
    assert_eq!(token.secret.expose(), secret);
    if let [position, replacement, ..] = rest {
        let mut bytes = built.clone().into_bytes();
        let i = usize::from(*position) % bytes.len();
        let new = replacement & 0x7f;
        if bytes[i] != new {
            bytes[i] = new;
            let changed = String::from_utf8(bytes).expect("ascii");
            assert!(format.parse(&changed).is_err(), "a one-byte change must be caught: {changed:?}");
        }
    }

    // 3. An issued token parses back to the same key id and secret.
    let key_id: KeyId = id.parse().expect("20 base62 characters are a key id");
    let (issued, issued_text) = format.issue(&key_id).expect("OS random source");
    assert_eq!(format.parse(issued_text.expose()), Ok(issued.clone()));
    assert_eq!(issued.key_id, key_id);
    check_parsed(&format, issued_text.expose());
});
