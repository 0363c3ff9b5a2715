//! Bounds on what every request brings before any route reads it (spec §1.9): the number and
//! total size of its headers. Past them the answer is `431 headers_too_large` in the JSON shape
//! of the path. (Beyond these, the HTTP parser itself refuses a request with a bare 431.)

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Headers one request may carry.
pub const MAX_HEADERS: usize = 64;
/// Bytes of header names and values one request may carry.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

pub async fn check<F>(req: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS {
        return ApiError::HeadersTooLarge(format!("a request may carry at most {MAX_HEADERS} headers")).into_response();
    }
    if bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(format!("a request's headers may hold at most {MAX_HEADER_BYTES} bytes"))
            .into_response();
    }
    next(req).await
}
