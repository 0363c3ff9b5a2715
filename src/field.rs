//! A field of a create or PATCH request as the business rules see it: absent, explicitly
//! `null`, or a value (spec §0.4 rule 6). The HTTP layer reads it; the runtime applies it.

/// Absent (keep), `null` (clear or reset), or a value (set).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Field<T> {
    /// The value, treating `null` as absent (create semantics).
    pub fn into_option(self) -> Option<T> {
        match self {
            Self::Value(v) => Some(v),
            _ => None,
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Field<U> {
        match self {
            Self::Absent => Field::Absent,
            Self::Null => Field::Null,
            Self::Value(v) => Field::Value(f(v)),
        }
    }

    /// Applies the field to an optional value: `null` clears it, a value sets it, absence
    /// keeps it.
    pub fn set(self, slot: &mut Option<T>) {
        match self {
            Self::Absent => {}
            Self::Null => *slot = None,
            Self::Value(v) => *slot = Some(v),
        }
    }

    /// Applies the field to a value that has a default: `null` resets it.
    pub fn set_or(self, slot: &mut T, default: impl FnOnce() -> T) {
        match self {
            Self::Absent => {}
            Self::Null => *slot = default(),
            Self::Value(v) => *slot = v,
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent)
    }
}
