//! Prefixed, time-ordered identifiers (`agt_…`, `key_…`, `req_…`; spec §1.4), and the random
//! base62 text of keys and secrets, and the lowercase hex of digests.
//!
//! The suffix is a ULID in lowercase Crockford base32, generated monotonically within this
//! process so that id order equals creation order even inside one millisecond.

use std::sync::Mutex;

use ulid::{Generator, Ulid};

static GENERATOR: Mutex<Option<Generator>> = Mutex::new(None);

fn next_ulid() -> Ulid {
    let mut guard = match GENERATOR.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    let generator = guard.get_or_insert_with(Generator::new);
    // The generator only fails when 2^80 ids were made in one millisecond; a fresh random
    // ULID is then still unique, merely not ordered within that millisecond.
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

/// A new id: `prefix` followed by 26 lowercase base32 characters.
pub fn new_id(prefix: &str) -> String {
    let mut suffix = [0u8; ulid::ULID_LEN];
    let suffix = next_ulid().array_to_str(&mut suffix);
    suffix.make_ascii_lowercase();
    let mut id = String::with_capacity(prefix.len() + suffix.len());
    id.push_str(prefix);
    id.push_str(suffix);
    id
}

/// The alphabet of keys and secrets.
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `n` uniformly distributed base62 characters (rejection sampling: no modulo bias).
pub fn random_base62(n: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            // 248 = 4 * 62: bytes at or above it would favour the first digits.
            if b < 248 && out.len() < n {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// True when `value` is `prefix` followed by a well-formed lowercase ULID.
pub fn is_well_formed(prefix: &str, value: &str) -> bool {
    let Some(suffix) = value.strip_prefix(prefix) else {
        return false;
    };
    suffix.len() == 26
        && suffix.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        && Ulid::from_string(&suffix.to_ascii_uppercase()).is_ok()
}

/// Lowercase hex of `bytes`: how key hashes, signatures and request fingerprints are written.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_ordered_and_well_formed() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("agt_")).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids are not in creation order");
        assert!(ids.iter().all(|id| is_well_formed("agt_", id) && id.len() == 30));
        assert!(!is_well_formed("agt_", &ids[0].replace("agt_", "key_")));
        assert!(!is_well_formed("agt_", "agt_short"));
        assert!(!is_well_formed("agt_", &ids[0].to_uppercase().replace("AGT_", "agt_")));
    }
}
