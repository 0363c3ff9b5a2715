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
    data: Vec<String>,
}

impl SseDecoder {
    /// Adds bytes and returns the frames they complete. Comments and unknown fields are skipped.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseFrame>, ProviderError> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| ProviderError::Upstream("stream is not UTF-8".into()))?;
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    frames.push(SseFrame {
                        event: self.event.take(),
                        data: self.data.join("\n"),
                    });
                    self.data.clear();
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "data" => self.data.push(value.to_string()),
                "event" => self.event = Some(value.to_string()),
                _ => {}
            }
        }
        Ok(frames)
    }

    /// True when a frame was started but not terminated by a blank line.
    pub fn has_partial(&self) -> bool {
        !self.data.is_empty() || self.buffer.iter().any(|b| !b.is_ascii_whitespace())
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
}
