//! Application state, router assembly, `serve`, background work and the shutdown signal.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use futures_util::task::AtomicWaker;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::api;
use crate::auth::KeyVerifier;
use crate::config::Config;
use crate::error::ApiError;
use crate::middleware;
use crate::middleware::rate_limit::Limiter;
use crate::providers::Providers;
use crate::runtime::Runtime;
use crate::store::Db;

/// Everything handlers share: the runtime context, and what only HTTP needs (key verification,
/// uptime). Cheap to clone; handlers take the part they need through `FromRef`.
#[derive(Clone)]
pub struct AppState {
    pub runtime: Runtime,
    pub verifier: Arc<KeyVerifier>,
    /// Per-key request rate and open streams (spec §1.7).
    pub limiter: Arc<Limiter>,
    pub started: Instant,
}

impl AppState {
    pub fn new(db: Db, config: Config, providers: Providers) -> Result<Self, String> {
        // A bad origin is a start-up error, not a silently closed door.
        middleware::cors::layer(&config.server.cors_allowed_origins)?;
        let verifier = KeyVerifier::new(config.auth_cache_ttl());
        let limiter = Limiter::new(&config, db.backend);
        Ok(Self {
            runtime: Runtime::new(db, config, providers)?,
            verifier: Arc::new(verifier),
            limiter: Arc::new(limiter),
            started: Instant::now(),
        })
    }
}

impl FromRef<AppState> for Runtime {
    fn from_ref(state: &AppState) -> Self {
        state.runtime.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let (routes, _) = api::routes().split_for_parts();
    let routes = routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(state.runtime.config.server.body_limit));
    middleware::apply(routes, &state).with_state(state)
}

/// Runs the server on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish (the caller bounds that with the shutdown deadline).
///
/// A connection that sends no whole request head within `server.header_read_timeout` (an idle
/// keep-alive connection included) is closed.
///
/// HTTP/1.1 only, served by hyper's HTTP/1 connection directly: a server that also detects
/// HTTP/2 reads each connection's first 24 bytes apart, and the request read after them doubles
/// the connection's read buffer to 16 kB, which every open stream then holds.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.runtime.shutdown.clone();
    let mut http = http1::Builder::new();
    // Without a limit, a client that never finishes a request head (or keeps a connection idle)
    // holds its connection for good, and enough of them use up the process's descriptors.
    let header_timeout = state.runtime.config.server.header_read_timeout;
    if header_timeout.is_zero() {
        http.header_read_timeout(None);
    } else {
        http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    }
    // One router for every connection (a clone shares its routes): serving a `Router` through
    // axum's make-service would rebuild every route for each new connection, which an open stream
    // then holds as long as it lasts.
    let router = router(state);
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        // Streams write small frames: without TCP_NODELAY a stream's last frame waits for the
        // client's delayed ACK (about 40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(tcp), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = repolled(connection.as_mut()) => result,
                () = shutdown.cancelled() => {
                    // The request in progress finishes; an idle keep-alive connection closes.
                    connection.as_mut().graceful_shutdown();
                    repolled(connection.as_mut()).await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Polls a connection again at once, up to [`REPOLLS`] times, when it wakes itself while being
/// polled. Serving chat turns, a connection wakes its own task in about two turns of three; the
/// runtime answers a task woken during its own poll by queueing it behind the others and waking
/// a sleeping worker thread to share the queue, and on a server that is not busy that thread
/// finds nothing to do, having cost a wake-up that takes longer than the second poll. Wake-ups from
/// elsewhere while it is polled (the provider's answer arriving on another thread) are taken the
/// same way; those after it are passed on to the task's own waker as usual.
async fn repolled<F: Future>(mut connection: Pin<&mut F>) -> F::Output {
    let wake = Arc::new(SelfWake::default());
    let waker = Waker::from(Arc::clone(&wake));
    std::future::poll_fn(move |cx| wake.poll(connection.as_mut(), cx, &waker)).await
}

/// Second polls at most, per poll of the task.
const REPOLLS: usize = 3;

/// The waker a [`repolled`] connection is polled with.
#[derive(Default)]
struct SelfWake {
    /// [`IDLE`], [`POLLING`] or [`WOKEN`] (while polled).
    state: AtomicU8,
    /// The task's own waker, for wake-ups outside a poll.
    task: AtomicWaker,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl SelfWake {
    fn poll<F: Future>(&self, mut connection: Pin<&mut F>, cx: &mut Context<'_>, waker: &Waker) -> Poll<F::Output> {
        self.task.register(cx.waker());
        let mut own = Context::from_waker(waker);
        for _ in 0..=REPOLLS {
            self.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(output) = connection.as_mut().poll(&mut own) {
                self.state.store(IDLE, Ordering::Release);
                return Poll::Ready(output);
            }
            if self
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
            // Woken while polled. A task out of its time slice is woken to yield, not to go on.
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        self.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Wake for SelfWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

/// A failed accept: a connection reset before it was accepted is skipped; anything else (out of
/// file descriptors, above all) is logged and the loop pauses a second rather than spin.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing 1 s");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A future that wakes itself `times` times while polled, then is ready; counts its polls.
    struct WakesItself {
        times: usize,
        polls: Arc<AtomicUsize>,
    }

    impl Future for WakesItself {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.times == 0 {
                return Poll::Ready(());
            }
            self.times -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// Counts the wake-ups given to the task's own waker.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll_once(times: usize) -> (Poll<()>, usize, usize) {
        let polls = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut inner = WakesItself {
            times,
            polls: Arc::clone(&polls),
        };
        let future = repolled(Pin::new(&mut inner));
        tokio::pin!(future);
        let outcome = future.as_mut().poll(&mut Context::from_waker(&waker));
        (outcome, polls.load(Ordering::Relaxed), count.0.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_connection_that_wakes_itself_is_polled_again_before_its_task_is_woken() {
        let (outcome, polls, wakes) = poll_once(1);
        assert!(outcome.is_ready(), "the second poll was left to a wake-up of the task");
        assert_eq!((polls, wakes), (2, 0));
    }

    #[tokio::test]
    async fn one_that_keeps_waking_itself_gives_its_turn_up_and_wakes_its_task() {
        let (outcome, polls, wakes) = poll_once(usize::MAX);
        assert!(outcome.is_pending());
        assert_eq!(polls, REPOLLS + 1, "polled again without bound");
        assert_eq!(wakes, 1, "the task was not woken to poll it later");
    }
}
