//! Request input as the spec wants it read (spec §0.4, §1.5): JSON bodies that report every bad
//! field at once, unknown and read-only fields named, query strings without unknown parameters,
//! and keyset pagination.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::error::ApiError;
pub use crate::field::Field;

/// Deepest JSON nesting accepted (spec §1.9).
const MAX_DEPTH: usize = 64;

/// A request body that is one JSON object (an absent body reads as `{}`).
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req.headers().get(CONTENT_TYPE).cloned();
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request(format!("could not read the request body: {}", rejection.body_text()))
            }
        })?;
        if bytes.is_empty() {
            return Ok(Self(Map::new()));
        }
        if !content_type.as_ref().is_some_and(is_json) {
            return Err(ApiError::bad_request(
                "the request body must be sent with Content-Type: application/json",
            ));
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON in the request body: {e}")))?;
        Self::from_value(value)
    }
}

impl JsonObject {
    /// A parsed body, held to the same rules as a request's: one object, nested at most
    /// [`MAX_DEPTH`] levels (the import CLI reads files with it).
    pub fn from_value(value: Value) -> Result<Self, ApiError> {
        if depth(&value) > MAX_DEPTH {
            return Err(ApiError::bad_request(format!(
                "the request body is nested deeper than {MAX_DEPTH} levels"
            )));
        }
        match value {
            Value::Object(map) => Ok(Self(map)),
            _ => Err(ApiError::bad_request("the request body must be a JSON object")),
        }
    }
}

fn is_json(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Reads typed fields out of a JSON object, collecting every problem under its JSON path.
pub struct Fields {
    object: Map<String, Value>,
    prefix: String,
    errors: BTreeMap<String, String>,
}

impl Fields {
    /// Starts reading `object`; fields outside `known` are reported as unknown, and those in
    /// `read_only` as read-only.
    pub fn new(object: Map<String, Value>, known: &[&str], read_only: &[&str]) -> Self {
        Self::nested(object, String::new(), known, read_only)
    }

    /// Starts reading an object found at `prefix` (`tasks[2].`) of a larger body.
    pub fn nested(object: Map<String, Value>, prefix: String, known: &[&str], read_only: &[&str]) -> Self {
        let mut errors = BTreeMap::new();
        for key in object.keys() {
            if read_only.contains(&key.as_str()) {
                errors.insert(format!("{prefix}{key}"), "read-only field".to_string());
            } else if !known.contains(&key.as_str()) {
                errors.insert(format!("{prefix}{key}"), "unknown field".to_string());
            }
        }
        Self { object, prefix, errors }
    }

    pub fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub fn error(&mut self, path: String, problem: impl Into<String>) {
        self.errors.entry(path).or_insert_with(|| problem.into());
    }

    pub fn has_error(&self, key: &str) -> bool {
        self.errors.contains_key(&self.path(key))
    }

    /// Ends reading: `Ok` when nothing failed, else one `400` naming every failing path.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_fields(self.errors))
        }
    }

    /// The raw JSON of `key`, for values read by rules of their own.
    pub fn raw(&mut self, key: &str) -> Field<Value> {
        match self.object.remove(key) {
            None => Field::Absent,
            Some(Value::Null) => Field::Null,
            Some(v) => Field::Value(v),
        }
    }

    /// A string of `min..=max` Unicode scalar values.
    pub fn string(&mut self, key: &str, min: usize, max: usize) -> Field<String> {
        match self.raw(key) {
            Field::Value(Value::String(s)) => {
                let len = s.chars().count();
                if len < min || len > max {
                    let problem = if min > 0 {
                        format!("must be {min} to {max} characters long")
                    } else {
                        format!("must be at most {max} characters long")
                    };
                    self.error(self.path(key), problem);
                    Field::Absent
                } else {
                    Field::Value(s)
                }
            }
            Field::Value(_) => self.wrong_type(key, "a string"),
            other => other.map_never(),
        }
    }

    /// A string of at most `max_bytes` UTF-8 bytes (long texts, spec §1.9).
    pub fn text(&mut self, key: &str, max_bytes: usize) -> Field<String> {
        match self.raw(key) {
            Field::Value(Value::String(s)) if s.len() > max_bytes => {
                self.error(self.path(key), format!("must be at most {max_bytes} bytes of UTF-8"));
                Field::Absent
            }
            Field::Value(Value::String(s)) => Field::Value(s),
            Field::Value(_) => self.wrong_type(key, "a string"),
            other => other.map_never(),
        }
    }

    pub fn integer(&mut self, key: &str, min: i64, max: i64) -> Field<i64> {
        match self.raw(key) {
            Field::Value(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Field::Value(i),
                Some(_) => {
                    self.error(self.path(key), format!("must be between {min} and {max}"));
                    Field::Absent
                }
                None => self.wrong_type(key, "an integer"),
            },
            Field::Value(_) => self.wrong_type(key, "an integer"),
            other => other.map_never(),
        }
    }

    pub fn boolean(&mut self, key: &str) -> Field<bool> {
        match self.raw(key) {
            Field::Value(Value::Bool(b)) => Field::Value(b),
            Field::Value(_) => self.wrong_type(key, "a boolean"),
            other => other.map_never(),
        }
    }

    pub fn number(&mut self, key: &str, min: f64, max: f64) -> Field<f64> {
        match self.raw(key) {
            Field::Value(Value::Number(n)) => match n.as_f64() {
                Some(x) if x >= min && x <= max => Field::Value(x),
                _ => {
                    self.error(self.path(key), format!("must be between {min} and {max}"));
                    Field::Absent
                }
            },
            Field::Value(_) => self.wrong_type(key, "a number"),
            other => other.map_never(),
        }
    }

    /// One of the given string values.
    pub fn one_of(&mut self, key: &str, allowed: &[&str]) -> Field<String> {
        match self.string(key, 0, 64) {
            Field::Value(s) if !allowed.contains(&s.as_str()) => {
                self.error(self.path(key), format!("must be one of {}", allowed.join(", ")));
                Field::Absent
            }
            other => other,
        }
    }

    /// An array of strings; each item is checked by `item` (which returns a problem or `None`).
    pub fn string_list(
        &mut self,
        key: &str,
        max_items: usize,
        item: impl Fn(&str) -> Option<String>,
    ) -> Field<Vec<String>> {
        let items = match self.raw(key) {
            Field::Value(Value::Array(items)) => items,
            Field::Value(_) => return self.wrong_type(key, "an array of strings"),
            other => return other.map_never(),
        };
        if items.len() > max_items {
            self.error(self.path(key), format!("must have at most {max_items} items"));
            return Field::Absent;
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, value) in items.into_iter().enumerate() {
            let path = format!("{}[{i}]", self.path(key));
            match value {
                Value::String(s) => match item(&s) {
                    Some(problem) => self.error(path, problem),
                    None => out.push(s),
                },
                _ => self.error(path, "must be a string"),
            }
        }
        Field::Value(out)
    }

    /// An object of string values: `max_keys` keys of `key_len` characters, values of at most
    /// `value_max` characters.
    pub fn string_map(
        &mut self,
        key: &str,
        max_keys: usize,
        key_len: (usize, usize),
        value_max: usize,
    ) -> Field<BTreeMap<String, String>> {
        let map = match self.raw(key) {
            Field::Value(Value::Object(map)) => map,
            Field::Value(_) => return self.wrong_type(key, "an object of strings"),
            other => return other.map_never(),
        };
        if map.len() > max_keys {
            self.error(self.path(key), format!("must have at most {max_keys} keys"));
            return Field::Absent;
        }
        let mut out = BTreeMap::new();
        for (k, v) in map {
            let path = format!("{}.{k}", self.path(key));
            let k_len = k.chars().count();
            if k_len < key_len.0 || k_len > key_len.1 {
                self.error(
                    path,
                    format!("keys must be {} to {} characters long", key_len.0, key_len.1),
                );
                continue;
            }
            match v {
                Value::String(s) if s.chars().count() <= value_max => {
                    out.insert(k, s);
                }
                Value::String(_) => self.error(path, format!("must be at most {value_max} characters long")),
                _ => self.error(path, "must be a string"),
            }
        }
        Field::Value(out)
    }

    /// `metadata` as spec §1.9 bounds it.
    pub fn metadata(&mut self, key: &str) -> Field<BTreeMap<String, String>> {
        self.string_map(key, 16, (1, 64), 512)
    }

    /// A nested object read with its own known fields; its problems are reported under
    /// `key.` paths when the returned reader is passed back to [`Fields::absorb`].
    pub fn object(&mut self, key: &str, known: &[&str]) -> Field<Fields> {
        match self.raw(key) {
            Field::Value(Value::Object(map)) => {
                Field::Value(Self::nested(map, format!("{}.", self.path(key)), known, &[]))
            }
            Field::Value(_) => self.wrong_type(key, "an object"),
            other => other.map_never(),
        }
    }

    /// Takes over the problems found by a nested reader.
    pub fn absorb(&mut self, nested: Fields) {
        for (path, problem) in nested.errors {
            self.errors.entry(path).or_insert(problem);
        }
    }

    fn wrong_type<T>(&mut self, key: &str, expected: &str) -> Field<T> {
        self.error(self.path(key), format!("must be {expected}"));
        Field::Absent
    }
}

impl Field<Value> {
    fn map_never<T>(self) -> Field<T> {
        match self {
            Field::Absent | Field::Value(_) => Field::Absent,
            Field::Null => Field::Null,
        }
    }
}

/// Query parameters, each taken by name; whatever is left is an unknown parameter (`400`).
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))?;
        Ok(Self(pairs))
    }
}

impl QueryParams {
    /// The last value given for `name`, removing every occurrence.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let mut value = None;
        self.0.retain(|(k, v)| {
            if k == name {
                value = Some(v.clone());
                false
            } else {
                true
            }
        });
        value
    }

    /// A boolean parameter (`true`/`false`), default `false`.
    pub fn flag(&mut self, name: &str) -> Result<bool, ApiError> {
        match self.take(name).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(ApiError::invalid_field(name, "must be true or false")),
        }
    }

    /// Fails when parameters were given that the route does not define (spec §1.5 rule 4).
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => Err(ApiError::invalid_field(name, "unknown query parameter")),
        }
    }
}

/// `limit` and `after` of spec §1.5.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: i64,
    pub after: Option<String>,
}

impl Page {
    /// Reads `limit` and `after` (an id with `id_prefix`) from the query.
    pub fn from_query(query: &mut QueryParams, id_prefix: &str) -> Result<Self, ApiError> {
        let limit = match query.take("limit") {
            None => 100,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid_field("limit", "must be an integer from 1 to 1000"));
                }
            },
        };
        let after = query.take("after");
        if let Some(after) = &after
            && !crate::ids::is_well_formed(id_prefix, after)
        {
            return Err(ApiError::invalid_field(
                "after",
                format!("must be an id starting with {id_prefix}"),
            ));
        }
        Ok(Self { limit, after })
    }

    /// How many rows to fetch: one more than the page, to know whether another page exists.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// The page as a JSON array, with `x-next-cursor` when rows beyond it exist.
    pub fn respond<T: serde::Serialize>(&self, mut items: Vec<T>, id_of: impl Fn(&T) -> &str) -> Response {
        let limit = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let more = items.len() > limit;
        items.truncate(limit);
        let cursor = more.then(|| items.last().map(|item| id_of(item).to_string())).flatten();
        let mut response = axum::Json(items).into_response();
        if let Some(cursor) = cursor
            && let Ok(value) = HeaderValue::from_str(&cursor)
        {
            response.headers_mut().insert("x-next-cursor", value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_problem_is_reported_under_its_path() {
        let mut fields = Fields::new(
            object(json!({"name": 7, "id": "x", "bogus": true, "tags": ["ok", 3], "inner": {"deep": 1}})),
            &["name", "tags", "inner"],
            &["id"],
        );
        assert_eq!(fields.string("name", 1, 10), Field::Absent);
        let _ = fields.string_list("tags", 4, |_| None);
        if let Field::Value(mut inner) = fields.object("inner", &["other"]) {
            let _ = inner.string("other", 1, 5);
            fields.absorb(inner);
        }
        let Err(ApiError::BadRequest { fields, .. }) = fields.finish() else {
            panic!("expected 400")
        };
        assert_eq!(fields["name"], "must be a string");
        assert_eq!(fields["id"], "read-only field");
        assert_eq!(fields["bogus"], "unknown field");
        assert_eq!(fields["tags[1]"], "must be a string");
        assert_eq!(fields["inner.deep"], "unknown field");
    }

    #[test]
    fn null_is_distinct_from_absent() {
        let mut fields = Fields::new(object(json!({"role": null})), &["role", "model"], &[]);
        assert_eq!(fields.string("role", 0, 10), Field::Null);
        assert_eq!(fields.string("model", 0, 10), Field::Absent);
        assert!(fields.finish().is_ok());
    }

    #[test]
    fn nesting_depth_is_counted() {
        let mut value = json!(1);
        for _ in 0..70 {
            value = json!([value]);
        }
        assert_eq!(depth(&value), 70);
    }
}
