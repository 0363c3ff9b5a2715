//! Every failure answers with a JSON body, in the shape its path calls for (spec §1.6, §3.11).

use axum::extract::Request;
use axum::http::header;
use axum::response::Response;

use crate::error::{ApiError, ErrorReport, ErrorShape};

/// The error shape of a request path: the OpenAI shape where only OpenAI clients call (chat
/// completions, spec §3.11, and models, §3.14), the REST shape elsewhere.
pub fn shape_for(path: &str) -> ErrorShape {
    let models = path == "/v1/models" || path.starts_with("/v1/models/");
    if path == "/v1/chat/completions" || models {
        ErrorShape::OpenAi
    } else {
        ErrorShape::Rest
    }
}

/// Marks an error answer whose body is already in its final shape (a stored answer replayed
/// byte for byte, spec §1.8): it passes through unchanged.
#[derive(Debug, Clone, Copy)]
pub struct Shaped;

pub async fn normalize<F>(req: Request, next: impl FnOnce(Request) -> F) -> Response
where
    F: Future<Output = Response>,
{
    let shape = shape_for(req.uri().path());
    let response = next(req).await;
    if response.extensions().get::<Shaped>().is_some() {
        return response;
    }
    if response.status().is_client_error() || response.status().is_server_error() {
        normalize_error(response, shape)
    } else {
        response
    }
}

/// The answer `normalize` would give for `path`, marked [`Shaped`]; for a layer inside it that
/// must see the final body.
pub fn shaped(response: Response, path: &str) -> Response {
    let mut response = if response.status().is_client_error() || response.status().is_server_error() {
        normalize_error(response, shape_for(path))
    } else {
        response
    };
    response.extensions_mut().insert(Shaped);
    response
}

/// Gives every error a JSON body of the right shape: ours are re-rendered for the OpenAI path;
/// framework answers (wrong method, body limit) get one built from their status. Headers such
/// as `Allow` are kept.
fn normalize_error(response: Response, shape: ErrorShape) -> Response {
    let report = response.extensions().get::<ErrorReport>().cloned();
    if report.is_some() && shape == ErrorShape::Rest {
        return response;
    }
    let report = report.unwrap_or_else(|| ApiError::from_status(response.status()).report());
    let (parts, _) = response.into_parts();
    let mut fresh = report.into_response(shape);
    for (name, value) in &parts.headers {
        if *name == header::ALLOW || name.as_str().starts_with("x-") || name.as_str().starts_with("retry-after") {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}
