//! The HTTP/1.1 client of the model providers. A request is written and its answer read by the
//! task that asked for it, on a connection it owns until the body ends; finished connections are
//! kept per origin for the next request. No connection task, no channel between the caller and
//! the socket, and a read buffer that starts at 1 kB: a turn waiting on a stream holds a socket
//! and little else.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use url::{Host, Url};

/// Idle connections kept per origin.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An idle connection older than this is closed instead of reused.
const IDLE_FOR: Duration = Duration::from_secs(90);
/// First size of a connection's read buffer; it doubles when a read fills it.
const READ_BUFFER: usize = 1024;
/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Longest error body read into memory.
const MAX_TEXT: usize = 1024 * 1024;

/// Why a request failed, described without its URL or header values.
#[derive(Debug)]
pub enum Error {
    /// Not a URL this client can call.
    Url(String),
    /// A header value that cannot be sent (the value is not repeated here: it may be a key).
    Header(&'static str),
    Connect(String),
    Timeout,
    /// Writing the request or reading the answer failed.
    Io(String),
    /// The answer is not HTTP/1.1 as this client reads it.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Url(why) => write!(f, "invalid URL: {why}"),
            Error::Header(name) => write!(f, "the {name} header is not a valid header value"),
            Error::Connect(why) => write!(f, "connection failed: {why}"),
            Error::Timeout => f.write_str("timeout"),
            Error::Io(why) => write!(f, "request failed: {why}"),
            Error::Protocol(why) => write!(f, "invalid answer: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// One client per process, shared by every provider; cloning shares its idle connections.
#[derive(Clone)]
pub struct Client(Arc<Shared>);

struct Shared {
    connect_timeout: Duration,
    tls: TlsConnector,
    /// Per origin, oldest first: reused from the back, expired from the front.
    idle: Mutex<HashMap<Origin, VecDeque<Idle>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Origin {
    tls: bool,
    host: Arc<str>,
    port: u16,
}

/// Where a provider's requests go: its URL read once, when the provider's client is built, with
/// the part of every request's head that does not change.
#[derive(Debug, Clone)]
pub struct Endpoint {
    origin: Origin,
    /// The request line and the `host` and `content-type` headers, up to the value of
    /// `content-length`.
    head: Arc<[u8]>,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, Error> {
        let url = Url::parse(url).map_err(|e| Error::Url(e.to_string()))?;
        let origin = Origin::of(&url)?;
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(b"POST ");
        head.extend_from_slice(url.path().as_bytes());
        if let Some(query) = url.query() {
            head.push(b'?');
            head.extend_from_slice(query.as_bytes());
        }
        head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        // `host_str` keeps an IPv6 address in brackets, as the header wants it.
        head.extend_from_slice(url.host_str().unwrap_or(&origin.host).as_bytes());
        if let Some(port) = url.port() {
            head.extend_from_slice(format!(":{port}").as_bytes());
        }
        head.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        Ok(Self {
            origin,
            head: head.into(),
        })
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Client {
    /// Trusts the Web PKI's roots (those of Mozilla).
    pub fn new(connect_timeout: Duration) -> Result<Self, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::with_roots(connect_timeout, roots)
    }

    fn with_roots(connect_timeout: Duration, roots: rustls::RootCertStore) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Connect(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(Arc::new(Shared {
            connect_timeout,
            tls: TlsConnector::from(Arc::new(config)),
            idle: Mutex::new(HashMap::new()),
        })))
    }

    /// Sends `body` as `POST` to `endpoint` with `content-type: application/json` and `headers`,
    /// and reads the answer's head. A kept connection the other side has closed meanwhile is
    /// replaced by a new one, once.
    pub async fn post_json(
        &self,
        endpoint: &Endpoint,
        headers: &[(&'static str, &str)],
        body: &[u8],
    ) -> Result<Response, Error> {
        let origin = &endpoint.origin;
        let message = request(endpoint, headers, body)?;
        let mut reuse = true;
        loop {
            let kept = if reuse { self.checkout(origin) } else { None };
            let reused = kept.is_some();
            let mut conn = match kept {
                Some(conn) => conn,
                None => self.connect(origin).await?,
            };
            match conn.exchange(&message).await {
                Ok(head) => return Ok(Response::new(head, conn, self.clone(), origin.clone())),
                // Nothing came back on a kept connection: it was closed while idle, and the
                // request was not read (a server closes only between requests).
                Err(Exchange::Closed(_)) if reused => reuse = false,
                Err(Exchange::Closed(e) | Exchange::Failed(e)) => return Err(e),
            }
        }
    }

    fn checkout(&self, origin: &Origin) -> Option<Conn> {
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.get_mut(origin)?;
        while let Some(Idle { conn, since }) = kept.pop_back() {
            if since.elapsed() < IDLE_FOR && conn.looks_open() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, origin: Origin, mut conn: Conn) {
        conn.buf.clear();
        conn.buf.shrink_to(READ_BUFFER);
        conn.start = 0;
        let mut idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner());
        let kept = idle.entry(origin).or_default();
        while kept.front().is_some_and(|i| i.since.elapsed() >= IDLE_FOR) {
            kept.pop_front();
        }
        if kept.len() < MAX_IDLE_PER_ORIGIN {
            kept.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, origin: &Origin) -> Result<Conn, Error> {
        tokio::time::timeout(self.0.connect_timeout, self.open(origin))
            .await
            .map_err(|_| Error::Timeout)?
    }

    async fn open(&self, origin: &Origin) -> Result<Conn, Error> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((&*origin.host, origin.port))
            .await
            .map_err(|e| Error::Connect(format!("cannot resolve the host: {e}")))?
            .collect();
        let mut last = Error::Connect("the host has no address".into());
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    tcp.set_nodelay(true).map_err(|e| Error::Connect(e.to_string()))?;
                    let io = if origin.tls {
                        let name = rustls::pki_types::ServerName::try_from(origin.host.to_string())
                            .map_err(|e| Error::Connect(e.to_string()))?;
                        let tls = self
                            .0
                            .tls
                            .connect(name, tcp)
                            .await
                            .map_err(|e| Error::Connect(e.to_string()))?;
                        Io::Tls(Box::new(tls))
                    } else {
                        Io::Plain(tcp)
                    };
                    return Ok(Conn {
                        io,
                        buf: Vec::with_capacity(READ_BUFFER),
                        start: 0,
                    });
                }
                Err(e) => last = Error::Connect(e.to_string()),
            }
        }
        Err(last)
    }
}

impl Origin {
    fn of(url: &Url) -> Result<Self, Error> {
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(Error::Url(format!("the scheme {other} is not http or https"))),
        };
        let host = match url.host() {
            Some(Host::Domain(d)) => d.into(),
            Some(Host::Ipv4(ip)) => ip.to_string().into(),
            Some(Host::Ipv6(ip)) => ip.to_string().into(),
            None => return Err(Error::Url("no host".into())),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Error::Url("no port".into()))?;
        Ok(Self { tls, host, port })
    }
}

/// The request as it goes on the wire: head and body in one buffer, one write.
fn request(endpoint: &Endpoint, headers: &[(&'static str, &str)], body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(&endpoint.head);
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            return Err(Error::Header(name));
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection and what has been read from it but not yet consumed (`buf[start..]`).
struct Conn {
    io: Io,
    buf: Vec<u8>,
    start: usize,
}

enum Exchange {
    /// The connection ended before a byte of the answer arrived.
    Closed(Error),
    Failed(Error),
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
    keep_alive: bool,
}

impl Conn {
    /// Whether an idle connection can still be written to: nothing to read and not closed.
    fn looks_open(&self) -> bool {
        let tcp = match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        };
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        self.make_room();
        self.io.read_buf(&mut self.buf).await
    }

    /// Reads what has arrived without waiting; false when nothing could be read.
    fn fill_now(&mut self) -> bool {
        self.make_room();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
        matches!(read.poll(&mut cx), Poll::Ready(Ok(n)) if n > 0)
    }

    fn make_room(&mut self) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            } else {
                self.buf.reserve(self.buf.capacity().max(READ_BUFFER));
            }
        }
    }

    async fn exchange(&mut self, message: &[u8]) -> Result<Head, Exchange> {
        let closed = |e: io::Error| Exchange::Closed(Error::Io(e.to_string()));
        self.io.write_all(message).await.map_err(closed)?;
        self.io.flush().await.map_err(closed)?;
        let mut received = false;
        loop {
            if let Some(head) = self.parse_head().map_err(Exchange::Failed)? {
                if (100..200).contains(&head.status) {
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() - self.start > MAX_HEAD {
                return Err(Exchange::Failed(Error::Protocol(
                    "the response head is too large".into(),
                )));
            }
            match self.fill().await {
                Ok(0) if !received => return Err(Exchange::Closed(Error::Io("connection closed".into()))),
                Ok(0) => {
                    return Err(Exchange::Failed(Error::Io(
                        "connection closed inside the response head".into(),
                    )));
                }
                Ok(_) => received = true,
                Err(e) if !received => return Err(closed(e)),
                Err(e) => return Err(Exchange::Failed(Error::Io(e.to_string()))),
            }
        }
    }

    /// A complete head at `buf[start..]`, consumed; `None` when more bytes are needed.
    fn parse_head(&mut self) -> Result<Option<Head>, Error> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let used = match response.parse(&self.buf[self.start..]) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Protocol(format!("invalid response head: {e}"))),
        };
        let status = response.code.unwrap_or(0);
        let mut headers = Vec::with_capacity(response.headers.len());
        let mut length = None;
        let mut chunked = false;
        let mut keep_alive = response.version == Some(1);
        for h in response.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            match name.as_str() {
                "content-length" => {
                    let n = value
                        .parse::<u64>()
                        .map_err(|_| Error::Protocol("invalid content-length".into()))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(Error::Protocol("conflicting content-length".into()));
                    }
                    length = Some(n);
                }
                "transfer-encoding" => {
                    chunked = value
                        .rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                    if !chunked {
                        keep_alive = false;
                    }
                }
                "connection" if value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) => keep_alive = false,
                _ => {}
            }
            headers.push((name, value));
        }
        self.start += used;
        let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Length(0)
        } else if chunked {
            Framing::Chunked(Chunked::Size)
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            keep_alive = false;
            Framing::Eof
        };
        Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }))
    }
}

enum Framing {
    /// Bytes of the body still to come.
    Length(u64),
    Chunked(Chunked),
    /// The body ends when the connection does.
    Eof,
}

#[derive(Clone, Copy)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

/// The answer: status and headers read, the body still on the connection.
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Body>,
}

struct Body {
    conn: Conn,
    framing: Framing,
    keep_alive: bool,
    client: Client,
    origin: Origin,
}

impl Response {
    fn new(head: Head, conn: Conn, client: Client, origin: Origin) -> Self {
        let body = Body {
            conn,
            framing: head.framing,
            keep_alive: head.keep_alive,
            client,
            origin,
        };
        let empty = matches!(body.framing, Framing::Length(0));
        let body = if empty {
            body.finish();
            None
        } else {
            Some(body)
        };
        Self {
            status: head.status,
            headers: head.headers,
            body,
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The next piece of the body, `None` after its end. Once the body has ended, its connection
    /// is kept for the next request (unless the answer asked to close it).
    pub async fn chunk(&mut self) -> Result<Option<&[u8]>, Error> {
        let Some(body) = self.body.as_mut() else {
            return Ok(None);
        };
        match body.next().await? {
            Some(range) => {
                let Some(body) = self.body.as_ref() else {
                    return Ok(None);
                };
                Ok(Some(&body.conn.buf[range]))
            }
            None => {
                if let Some(body) = self.body.take() {
                    body.finish();
                }
                Ok(None)
            }
        }
    }

    /// The whole body as text (invalid UTF-8 replaced), up to 1 MiB.
    pub async fn text(mut self) -> Result<String, Error> {
        let mut out = Vec::new();
        while let Some(bytes) = self.chunk().await? {
            if out.len() + bytes.len() > MAX_TEXT {
                return Err(Error::Protocol("the body is too large".into()));
            }
            out.extend_from_slice(bytes);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// What the bytes already read give next.
enum Step {
    Data(Range<usize>),
    End,
    More,
}

impl Drop for Response {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            body.drain_now();
        }
    }
}

impl Body {
    /// The range of `conn.buf` holding the next body bytes, consumed; `None` at the end.
    async fn next(&mut self) -> Result<Option<Range<usize>>, Error> {
        loop {
            match self.advance()? {
                Step::Data(range) => return Ok(Some(range)),
                Step::End => return Ok(None),
                Step::More => {}
            }
            match self.conn.fill().await {
                Ok(0) if matches!(self.framing, Framing::Eof) => {
                    self.framing = Framing::Length(0);
                    self.keep_alive = false;
                    return Ok(None);
                }
                Ok(0) => return Err(Error::Io("connection closed before the body ended".into())),
                Ok(_) => {}
                Err(e) => return Err(Error::Io(e.to_string())),
            }
        }
    }

    /// The next step of the body from the bytes already read.
    fn advance(&mut self) -> Result<Step, Error> {
        loop {
            let conn = &mut self.conn;
            let available = conn.buf.len() - conn.start;
            match self.framing {
                Framing::Length(0) => return Ok(Step::End),
                Framing::Length(left) => {
                    if available == 0 {
                        return Ok(Step::More);
                    }
                    let n = available.min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.framing = Framing::Length(left - n as u64);
                    return Ok(Step::Data(conn.take(n)));
                }
                Framing::Eof => {
                    if available == 0 {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(conn.take(available)));
                }
                Framing::Chunked(Chunked::Data(left)) => {
                    if available == 0 {
                        return Ok(Step::More);
                    }
                    let n = available.min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    });
                    return Ok(Step::Data(conn.take(n)));
                }
                Framing::Chunked(state) => {
                    let Some(line) = conn.line() else {
                        if available > MAX_HEAD {
                            return Err(Error::Protocol("a chunk line is too long".into()));
                        }
                        return Ok(Step::More);
                    };
                    let next = match state {
                        Chunked::Size => {
                            let text = std::str::from_utf8(&conn.buf[line]).unwrap_or("");
                            let size = text.split(';').next().unwrap_or("").trim();
                            match u64::from_str_radix(size, 16) {
                                Ok(0) => Chunked::Trailers,
                                Ok(n) => Chunked::Data(n),
                                Err(_) => return Err(Error::Protocol("invalid chunk size".into())),
                            }
                        }
                        Chunked::DataEnd if line.is_empty() => Chunked::Size,
                        Chunked::DataEnd => return Err(Error::Protocol("a chunk is longer than its size".into())),
                        Chunked::Trailers if line.is_empty() => {
                            self.framing = Framing::Length(0);
                            return Ok(Step::End);
                        }
                        other => other,
                    };
                    self.framing = Framing::Chunked(next);
                }
            }
        }
    }

    /// A body left unread: what is already here and one read that does not wait may still end
    /// it (an SSE answer's last frame and the body's end come together), and then its
    /// connection is kept; else it is closed.
    fn drain_now(mut self) {
        let mut may_read = true;
        loop {
            match self.advance() {
                Ok(Step::Data(_)) => {}
                Ok(Step::End) => return self.finish(),
                Ok(Step::More) if may_read && self.conn.fill_now() => may_read = false,
                _ => return,
            }
        }
    }

    /// Keeps the connection if the answer allows it and nothing beyond the body was sent.
    fn finish(self) {
        if self.keep_alive && self.conn.start == self.conn.buf.len() {
            self.client.checkin(self.origin, self.conn);
        }
    }
}

impl Conn {
    fn take(&mut self, n: usize) -> Range<usize> {
        let range = self.start..self.start + n;
        self.start += n;
        range
    }

    /// A complete CRLF-terminated line at `buf[start..]`, consumed, without its line end.
    fn line(&mut self) -> Option<Range<usize>> {
        let at = self.buf[self.start..].windows(2).position(|w| w == b"\r\n")?;
        let range = self.start..self.start + at;
        self.start += at + 2;
        Some(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    const CA: &[u8] = include_bytes!("../../tests/fixtures/tls/ca.der");
    const CERT: &[u8] = include_bytes!("../../tests/fixtures/tls/localhost.der");
    const KEY: &[u8] = include_bytes!("../../tests/fixtures/tls/localhost.key.der");

    /// Reads one request (head and `content-length` body) and returns its head.
    async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.ok()?;
        Some(head)
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n\
        8;ext=1\r\ndata: a\n\r\n8\r\n\ndata: b\r\n2\r\n\n\n\r\n0\r\nx-trailer: 1\r\n\r\n";

    async fn body_of(response: &mut Response) -> String {
        let mut out = Vec::new();
        while let Some(bytes) = response.chunk().await.unwrap() {
            out.extend_from_slice(bytes);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn a_chunked_answer_over_tls_is_read_whole_and_its_connection_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CERT.to_vec().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(KEY.to_vec().into()),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let mut server = tokio::task::JoinSet::new();
        server.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    while let Some(head) = read_request(&mut tls).await {
                        assert!(head.starts_with("POST /v1/x?q=1 HTTP/1.1\r\n"), "{head}");
                        assert!(head.contains("\r\nauthorization: Bearer k\r\n"), "{head}");
                        tls.write_all(CHUNKED).await.unwrap();
                        tls.flush().await.unwrap();
                    }
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CA.to_vec().into()).unwrap();
        let client = Client::with_roots(Duration::from_secs(5), roots).unwrap();
        let url = Endpoint::parse(&format!("https://localhost:{port}/v1/x?q=1")).unwrap();
        for _ in 0..3 {
            let mut response = client
                .post_json(&url, &[("authorization", "Bearer k")], b"{}")
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.header("content-type"), Some("text/event-stream"));
            assert_eq!(body_of(&mut response).await, "data: a\n\ndata: b\n\n");
        }
        // An answer dropped unread whose end has arrived leaves its connection reusable too.
        let response = client
            .post_json(&url, &[("authorization", "Bearer k")], b"{}")
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
        let mut response = client
            .post_json(&url, &[("authorization", "Bearer k")], b"{}")
            .await
            .unwrap();
        assert_eq!(body_of(&mut response).await, "data: a\n\ndata: b\n\n");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A certificate the client does not trust is a connection failure.
        let untrusting = Client::new(Duration::from_secs(5)).unwrap();
        let refused = untrusting.post_json(&url, &[], b"{}").await.err().unwrap();
        assert!(matches!(refused, Error::Connect(_)), "{refused}");
    }

    #[tokio::test]
    async fn a_kept_connection_closed_by_the_server_is_replaced_and_bodies_by_length_or_close_are_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = tokio::task::JoinSet::new();
        server.spawn(async move {
            // First connection: one answer by length, then closed by the server while idle.
            let (mut tcp, _) = listener.accept().await.unwrap();
            read_request(&mut tcp).await.unwrap();
            tcp.write_all(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 5\r\n\r\nslow!")
                .await
                .unwrap();
            drop(tcp);
            // Second connection: an answer without length, ended by closing.
            let (mut tcp, _) = listener.accept().await.unwrap();
            read_request(&mut tcp).await.unwrap();
            tcp.write_all(b"HTTP/1.1 500 Oops\r\n\r\nall of it").await.unwrap();
        });
        let client = Client::new(Duration::from_secs(5)).unwrap();
        let url = Endpoint::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let response = client.post_json(&url, &[], b"{}").await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.header("retry-after"), Some("2"));
        assert_eq!(response.text().await.unwrap(), "slow!");
        let response = client.post_json(&url, &[], b"{}").await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.text().await.unwrap(), "all of it");
    }

    #[tokio::test]
    async fn bodies_far_larger_than_the_read_buffer_arrive_whole_in_pieces() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let big: Vec<u8> = (0..70_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let sent = big.clone();
        let mut server = tokio::task::JoinSet::new();
        server.spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            // One chunk of 70,000 bytes written a few bytes at a time, its size line split too.
            read_request(&mut tcp).await.unwrap();
            let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            answer.extend_from_slice(format!("{:x}\r\n", sent.len()).as_bytes());
            answer.extend_from_slice(&sent);
            answer.extend_from_slice(b"\r\n0\r\n\r\n");
            for piece in answer.chunks(4093) {
                tcp.write_all(piece).await.unwrap();
                tcp.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            // The same by length, on the same connection.
            read_request(&mut tcp).await.unwrap();
            let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", sent.len()).into_bytes();
            answer.extend_from_slice(&sent);
            for piece in answer.chunks(7001) {
                tcp.write_all(piece).await.unwrap();
                tcp.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let client = Client::new(Duration::from_secs(5)).unwrap();
        let url = Endpoint::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        for _ in 0..2 {
            let mut response = client.post_json(&url, &[], b"{}").await.unwrap();
            let mut body = Vec::new();
            while let Some(bytes) = response.chunk().await.unwrap() {
                body.extend_from_slice(bytes);
            }
            assert_eq!(body.len(), big.len());
            assert!(body == big, "the body arrived changed");
        }
    }

    #[tokio::test]
    async fn a_header_value_with_a_line_break_is_refused_without_being_repeated() {
        let client = Client::new(Duration::from_secs(5)).unwrap();
        let error = client
            .post_json(
                &Endpoint::parse("http://127.0.0.1:9/").unwrap(),
                &[("x-api-key", "sk-secret\r\nx: y")],
                b"{}",
            )
            .await
            .err()
            .unwrap();
        assert!(matches!(error, Error::Header("x-api-key")));
        assert!(!error.to_string().contains("sk-secret"));
    }
}
