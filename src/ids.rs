//! Prefixed, time-ordered identifiers (`agt_…`, `key_…`, `req_…`; spec §1.4).
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
    let mut id = String::with_capacity(prefix.len() + 26);
    id.push_str(prefix);
    id.push_str(&next_ulid().to_string().to_ascii_lowercase());
    id
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
