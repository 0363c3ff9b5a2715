//! The API key format of spec §1.2.1: `sk_(live|test)_` + 26 random base62 + 6 base62 CRC-32.
//!
//! Everything here is pure and local: a key with a wrong checksum is refused without any
//! database access.

use sha2::{Digest, Sha256};

use crate::ids::{BASE62, random_base62};
use crate::scope::Environment;

pub const KEY_LEN: usize = 40;
const PREFIX_LEN: usize = 8;
const RANDOM_LEN: usize = 26;
const CHECKSUM_LEN: usize = 6;
/// How many leading characters are kept for display (`sk_test_Xq7L`).
pub const DISPLAY_PREFIX_LEN: usize = 12;

/// The key prefix of each environment.
fn key_prefix(environment: Environment) -> &'static str {
    match environment {
        Environment::Live => "sk_live_",
        Environment::Test => "sk_test_",
    }
}

/// Why a token is not a usable key, before any database lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormatError {
    /// Not of the key pattern: `401 unauthorized`.
    Malformed,
    /// Of the pattern, but the checksum is wrong: `401 invalid_api_key`.
    BadChecksum,
}

/// Checks pattern and checksum; returns the key's environment.
pub fn check(token: &str) -> Result<Environment, KeyFormatError> {
    if token.len() != KEY_LEN {
        return Err(KeyFormatError::Malformed);
    }
    let environment = if token.starts_with("sk_live_") {
        Environment::Live
    } else if token.starts_with("sk_test_") {
        Environment::Test
    } else {
        return Err(KeyFormatError::Malformed);
    };
    if !token[PREFIX_LEN..].bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyFormatError::Malformed);
    }
    let (body, checksum) = token.split_at(PREFIX_LEN + RANDOM_LEN);
    if checksum != encode_checksum(body) {
        return Err(KeyFormatError::BadChecksum);
    }
    Ok(environment)
}

/// A new key from the operating system's secure random source.
pub fn generate(environment: Environment) -> Result<String, getrandom::Error> {
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(key_prefix(environment));
    key.push_str(&random_base62(RANDOM_LEN)?);
    let checksum = encode_checksum(&key);
    key.push_str(&checksum);
    Ok(key)
}

fn encode_checksum(body: &str) -> String {
    let mut value = u64::from(crc32fast::hash(body.as_bytes()));
    let mut digits = [b'0'; CHECKSUM_LEN];
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

/// Lowercase hex SHA-256 of the whole key: the only form in which a key is stored.
pub fn hash(token: &str) -> String {
    crate::ids::hex(&Sha256::digest(token.as_bytes()))
}

/// The first characters of a key, safe to show and store for display.
pub fn display_prefix(token: &str) -> &str {
    &token[..DISPLAY_PREFIX_LEN.min(token.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_the_zlib_polynomial() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn the_spec_test_vectors_check_out() {
        assert_eq!(crc32fast::hash(b"sk_test_Xq7Lm2Pz9Rt4Vb8Nc1Kd5Wf3Gh"), 0xE4FA_19EC);
        assert_eq!(encode_checksum("sk_test_Xq7Lm2Pz9Rt4Vb8Nc1Kd5Wf3Gh"), "4BywZw");
        assert_eq!(check("sk_test_Xq7Lm2Pz9Rt4Vb8Nc1Kd5Wf3Gh4BywZw"), Ok(Environment::Test));
        assert_eq!(check("sk_live_Xq7Lm2Pz9Rt4Vb8Nc1Kd5Wf3Gh2plVUr"), Ok(Environment::Live));
    }

    #[test]
    fn one_changed_character_fails_the_checksum() {
        let key = generate(Environment::Live).unwrap();
        assert_eq!(check(&key), Ok(Environment::Live));
        let mut bytes = key.clone().into_bytes();
        bytes[20] = if bytes[20] == b'a' { b'b' } else { b'a' };
        let corrupted = String::from_utf8(bytes).unwrap();
        assert_eq!(check(&corrupted), Err(KeyFormatError::BadChecksum));
    }

    #[test]
    fn tokens_outside_the_pattern_are_malformed() {
        for token in [
            "",
            "sk_test_",
            "sk_prod_Xq7Lm2Pz9Rt4Vb8Nc1Kd5Wf3Gh4BywZw",
            "sk_test_Xq7Lm2Pz9Rt4Vb8Nc1Kd5Wf3Gh4BywZw1",
            "sk_test_Xq7Lm2Pz9Rt4Vb8Nc1Kd5Wf3Gh4Byw-w",
            "sk_test_Xq7Lm2Pz9Rt4Vb8Nc1Kd5Wf3Gh4Bywé",
        ] {
            assert_eq!(check(token), Err(KeyFormatError::Malformed), "{token}");
        }
    }

    #[test]
    fn generated_keys_are_random_and_well_formed() {
        let a = generate(Environment::Test).unwrap();
        let b = generate(Environment::Test).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_LEN);
        assert!(a.starts_with("sk_test_"));
        assert_eq!(display_prefix(&a).len(), 12);
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }
}
