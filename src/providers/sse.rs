//! Reading a provider's `text/event-stream` body: bytes in, `(event, data)` frames out.

use futures_util::Stream;

use super::types::ProviderError;
use super::upstream::Response;

/// One server-sent event: the `event:` name (if any) and the `data:` lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser; feed it bytes, take complete frames.
#[derive(Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    event: Option<String>,
    /// The frame's `data:` lines so far, joined with `\n`.
    data: String,
    /// Whether the frame has a `data:` line (which may be empty).
    has_data: bool,
}

impl SseDecoder {
    /// Adds bytes and returns the frames they complete. Comments and unknown fields are skipped.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseFrame>, ProviderError> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut start = 0;
        while let Some(len) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buffer[start..start + len];
            start += len + 1;
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let line = std::str::from_utf8(line).map_err(|_| ProviderError::Upstream("stream is not UTF-8".into()))?;
            if line.is_empty() {
                if self.has_data || self.event.is_some() {
                    frames.push(SseFrame {
                        event: self.event.take(),
                        data: std::mem::take(&mut self.data),
                    });
                    self.has_data = false;
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    if self.has_data {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                    self.has_data = true;
                }
                "event" => self.event = Some(value.to_string()),
                _ => {}
            }
        }
        self.buffer.drain(..start);
        Ok(frames)
    }

    /// True when a frame was started but not terminated by a blank line.
    pub fn has_partial(&self) -> bool {
        self.has_data || self.buffer.iter().any(|b| !b.is_ascii_whitespace())
    }
}

/// Turns a response body into frames. A transport error becomes `ProviderError::Upstream`.
pub fn frames(mut response: Response) -> impl Stream<Item = Result<SseFrame, ProviderError>> + Send {
    async_stream::stream! {
        let mut decoder = SseDecoder::default();
        loop {
            let fed = match response.chunk().await {
                Ok(Some(bytes)) => decoder.feed(bytes),
                Ok(None) => break,
                Err(e) => Err(ProviderError::Upstream(format!("stream broke: {e}"))),
            };
            match fed {
                Ok(frames) => {
                    for frame in frames {
                        yield Ok(frame);
                    }
                }
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
        if decoder.has_partial() {
            yield Err(ProviderError::Upstream("stream ended inside a frame".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_on_blank_lines_across_reads() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.feed(b"event: message_start\ndata: {\"a\"").unwrap().is_empty());
        let frames = decoder.feed(b":1}\n\n: ping\n\ndata: [DONE]\r\n\r\n").unwrap();
        assert_eq!(
            frames,
            vec![
                SseFrame {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseFrame {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
        assert!(!decoder.has_partial());
        decoder.feed(b"data: {\"half\"").unwrap();
        assert!(decoder.has_partial());
    }

    #[test]
    fn data_lines_join_with_newlines_and_a_character_may_span_two_reads() {
        let mut decoder = SseDecoder::default();
        let frames = decoder.feed(b"data: a\ndata:\ndata\nid: 7\n\nevent: ping\n\n").unwrap();
        assert_eq!(
            frames,
            vec![
                SseFrame {
                    event: None,
                    data: "a\n\n".into()
                },
                SseFrame {
                    event: Some("ping".into()),
                    data: String::new()
                },
            ]
        );
        assert!(decoder.feed(b"data: caf\xc3").unwrap().is_empty());
        assert!(decoder.has_partial());
        let frames = decoder.feed(b"\xa9\n\n").unwrap();
        assert_eq!(frames[0].data, "café");
        assert!(decoder.feed(b"data: \xff\n").is_err());
    }
}
