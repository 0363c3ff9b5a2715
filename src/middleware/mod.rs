//! The request middleware, one concern a file, and the order in which it wraps the routes.

mod auth;
pub mod cors;
mod errors;
mod idempotency;
mod limits;
mod metrics;
pub mod rate_limit;
mod request_log;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;

use crate::app::AppState;

/// Wraps every route (and the fallback) in the request middleware, added after routing so that
/// `MatchedPath` is known. Its steps, outermost first:
///
/// 1. `request_log`, outermost, so that every answer, including a refusal, gets a request id
///    and an access line, and everything inside runs in the request span;
/// 2. `metrics`, so that refusals and framework answers are counted, with their final status;
/// 3. `errors`, so that every failure below it, the auth refusal included, gets the JSON shape of
///    its path;
/// 4. `limits`, so that oversized headers are refused before anything reads them;
/// 5. `auth`, so that nothing past it runs for a caller without a valid key;
/// 6. `rate_limit`, so that only authenticated requests take a token, every one of them, with
///    the headers on whatever the route answers, a replay included;
/// 7. `idempotency`, innermost, so that it sees the key's scope and the route's own answer, and
///    never records a refusal of the steps above;
///
/// and, when origins are configured, `cors` outside them all, so that a browser's preflight
/// is answered without a key and every answer carries the CORS headers.
///
/// The seven steps are one layer ([`steps`]), each calling the next: a layer of its own each
/// would clone everything below it, the route included, for every request.
pub fn apply(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let router = router.layer(from_fn_with_state(state.clone(), steps));
    match cors::layer(&state.runtime.config.server.cors_allowed_origins) {
        Ok(Some(cors)) => router.layer(cors),
        Ok(None) => router,
        // Checked when the state is built (`AppState::new`): not reached.
        Err(problem) => {
            tracing::error!(problem, "CORS is off");
            router
        }
    }
}

/// Steps 1–7 of [`apply`], in that order, around the route.
async fn steps(State(state): State<AppState>, req: Request, route: Next) -> Response {
    let state = &state;
    request_log::log(req, |req| {
        metrics::record(&state.runtime.metrics, req, |req| {
            errors::normalize(req, |req| {
                limits::check(req, |req| {
                    auth::authenticate(state, req, |req| {
                        rate_limit::limit(state, req, |req| {
                            idempotency::replay_or_record(state, req, |req| route.run(req))
                        })
                    })
                })
            })
        })
    })
    .await
}
