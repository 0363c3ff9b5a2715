//! Server-sent events on the wire (spec §3.8, §5.6, §6.9, §7.1): a frame is rendered to bytes
//! once, so that one event written to many subscribers is shared, not copied for each; and the
//! response body that writes the frames, with a `: ping` comment after a quiet interval.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

/// The comment a quiet stream sends so that proxies and clients keep it open.
const PING: &[u8] = b": ping\n\n";

/// One frame, field by field; turned into its bytes when it is sent.
#[derive(Default)]
pub struct Event {
    buf: BytesMut,
}

impl Event {
    /// The `data` field; each line of `data` a field of its own, as the format requires.
    pub fn data(mut self, data: impl AsRef<str>) -> Self {
        let data = data.as_ref();
        self.buf.reserve(data.len() + 8);
        let mut rest = data;
        loop {
            let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
            self.buf.put_slice(b"data: ");
            self.buf.put_slice(&rest.as_bytes()[..end]);
            self.buf.put_u8(b'\n');
            if end == rest.len() {
                return self;
            }
            let skip = if rest[end..].starts_with("\r\n") { 2 } else { 1 };
            rest = &rest[end + skip..];
        }
    }

    /// The `data` field holding `value` as compact JSON, which has no line breaks; `{}` for a
    /// value JSON cannot hold (a map whose keys are not strings), which no caller passes.
    pub fn json_data(mut self, value: &impl serde::Serialize) -> Self {
        let start = self.buf.len();
        self.buf.reserve(256);
        self.buf.put_slice(b"data: ");
        if serde_json::to_writer((&mut self.buf).writer(), value).is_err() {
            self.buf.truncate(start);
            return self.data("{}");
        }
        self.buf.put_u8(b'\n');
        self
    }

    /// The `event` field (the event's name).
    pub fn event(self, name: impl AsRef<str>) -> Self {
        self.field(b"event: ", name.as_ref())
    }

    /// The `id` field, which a client sends back as `Last-Event-ID` when it reconnects.
    pub fn id(self, id: impl AsRef<str>) -> Self {
        self.field(b"id: ", id.as_ref())
    }

    /// The `retry` field: how long a client waits before it reconnects.
    pub fn retry(self, after: Duration) -> Self {
        self.field(b"retry: ", &after.as_millis().to_string())
    }

    /// A one-line field; a line break in `value`, which no caller passes, becomes a space rather
    /// than ending the frame early.
    fn field(mut self, name: &[u8], value: &str) -> Self {
        self.buf.reserve(name.len() + value.len() + 1);
        self.buf.put_slice(name);
        for byte in value.bytes() {
            self.buf
                .put_u8(if byte == b'\n' || byte == b'\r' { b' ' } else { byte });
        }
        self.buf.put_u8(b'\n');
        self
    }
}

impl From<Event> for Bytes {
    fn from(mut event: Event) -> Self {
        event.buf.put_u8(b'\n');
        event.buf.freeze()
    }
}

/// A `text/event-stream` response writing `frames` as they come, with a ping after `keepalive`
/// without one.
pub fn response<S, T>(frames: S, keepalive: Duration) -> Response
where
    S: Stream<Item = Result<T, Infallible>> + Send + 'static,
    T: Into<Bytes>,
{
    let body = SseBody {
        frames: Box::pin(frames),
        quiet: Box::pin(tokio::time::sleep(keepalive)),
        keepalive,
        sent: Instant::now(),
    };
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The body of [`response`]. The keep-alive timer is not moved for every frame: when it fires
/// after frames were sent, it is set again to `keepalive` after the last of them.
struct SseBody<S> {
    frames: Pin<Box<S>>,
    quiet: Pin<Box<Sleep>>,
    keepalive: Duration,
    /// When the last frame went out.
    sent: Instant,
}

impl<S, T> http_body::Body for SseBody<S>
where
    S: Stream<Item = Result<T, Infallible>>,
    T: Into<Bytes>,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        match this.frames.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent = Instant::now();
                Poll::Ready(Some(Ok(Frame::data(frame.into()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => loop {
                ready!(this.quiet.as_mut().poll(cx));
                let now = Instant::now();
                let due = this.sent + this.keepalive;
                if due > now {
                    this.quiet.as_mut().reset(due);
                    continue;
                }
                this.sent = now;
                this.quiet.as_mut().reset(now + this.keepalive);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(PING)))));
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn text(event: Event) -> String {
        String::from_utf8(Bytes::from(event).to_vec()).unwrap()
    }

    #[test]
    fn fields_and_lines_come_out_as_the_format_has_them() {
        let frame = Event::default().id("42").event("task:created").data("a\nb\r\nc");
        assert_eq!(
            text(Event::default().data("x\r\ry\n")),
            "data: x\ndata: \ndata: y\ndata: \n\n"
        );
        assert_eq!(
            text(frame),
            "id: 42\nevent: task:created\ndata: a\ndata: b\ndata: c\n\n"
        );
        let retry = Event::default().retry(Duration::from_millis(3000));
        assert_eq!(text(retry), "retry: 3000\n\n");
        let json = Event::default().json_data(&serde_json::json!({"a": "x\ny"}));
        assert_eq!(text(json), "data: {\"a\":\"x\\ny\"}\n\n");
        let keys_not_strings = std::collections::BTreeMap::from([((1, 2), 3)]);
        assert_eq!(
            text(Event::default().id("7").json_data(&keys_not_strings)),
            "id: 7\ndata: {}\n\n"
        );
        assert_eq!(text(Event::default().event("bad\nname")), "event: bad name\n\n");
    }

    /// Frames every 10 ms for 1.5 s with a keep-alive of 0.5 s: no ping among them (the timer
    /// set at the start fires at 0.5 s, with frames just sent), then one ping, no sooner than
    /// 0.5 s after the last frame.
    #[tokio::test]
    async fn a_ping_goes_out_only_after_a_whole_keepalive_without_frames() {
        let keepalive = Duration::from_millis(500);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (Ok::<_, Infallible>(frame), rx))
        });
        let mut body = response(frames, keepalive).into_body();
        let sender = async move {
            for i in 0..150 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tx.send(Bytes::from(format!("f{i}"))).await.unwrap();
            }
            // Kept open, quiet, until the reader is done.
            std::future::pending::<()>().await;
        };
        let reader = async {
            let mut last = Instant::now();
            for i in 0..150 {
                let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
                assert_eq!(frame, format!("f{i}"), "frame {i}");
                last = Instant::now();
            }
            let ping = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(ping, PING);
            assert!(
                last.elapsed() >= keepalive,
                "a ping {:?} after the last frame",
                last.elapsed()
            );
        };
        tokio::select! {
            () = sender => unreachable!("the sender never ends"),
            () = reader => {}
        }
    }
}
