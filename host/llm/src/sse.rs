//! A small Server-Sent Events decoder: bytes in, events out.
//!
//! Our own rather than `eventsource-stream`: it is fed the raw body frames the outbound
//! client yields (no `Stream` adapter), keeps bytes until a line is whole (so a
//! character split across reads is decoded once, whole), accepts `\n`, `\r\n` and `\r`
//! line ends (a `\r` at the end of one read and `\n` at the start of the next are one
//! line end), and dispatches a last event that lacks its closing blank line when the
//! body ends, as lenient servers need.

/// One event: its `event:` name (empty when absent) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SseEvent {
    /// The `event:` field.
    pub(crate) event: String,
    /// The `data:` field(s).
    pub(crate) data: String,
}

/// The decoder's state between reads.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    line: Vec<u8>,
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
}

impl SseDecoder {
    /// Feeds the next bytes of the body; whole events are appended to `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(out),
                b'\r' => {
                    self.end_line(out);
                    self.after_cr = true;
                }
                _ => self.line.push(byte),
            }
        }
    }

    /// The body ended: a last line without its line end, and a last event without its
    /// blank line, are dispatched.
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        if text.starts_with(':') {
            return;
        }
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data || !self.event.is_empty() {
            out.push(SseEvent { event: std::mem::take(&mut self.event), data: std::mem::take(&mut self.data) });
        }
        self.has_data = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(parts: &[&[u8]], finish: bool) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::default();
        let mut out = Vec::new();
        for part in parts {
            decoder.feed(part, &mut out);
        }
        if finish {
            decoder.finish(&mut out);
        }
        out
    }

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent { event: name.into(), data: data.into() }
    }

    #[test]
    fn decodes_lf_crlf_and_cr_line_ends_alike() {
        let expected = vec![event("", "a"), event("e", "b\nc")];
        assert_eq!(decode(&[b"data: a\n\nevent: e\ndata: b\ndata: c\n\n"], false), expected);
        assert_eq!(decode(&[b"data: a\r\n\r\nevent: e\r\ndata: b\r\ndata: c\r\n\r\n"], false), expected);
        assert_eq!(decode(&[b"data: a\r\revent: e\rdata: b\rdata: c\r\r"], false), expected);
    }

    #[test]
    fn a_crlf_split_across_reads_is_one_line_end() {
        assert_eq!(decode(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"], false), vec![event("", "a"), event("", "b")]);
    }

    #[test]
    fn a_character_split_across_reads_is_decoded_whole() {
        let text = "data: h\u{e9}llo \u{1f600}\n\n".as_bytes();
        let (a, rest) = text.split_at(8); // inside the two bytes of é
        let (b, c) = rest.split_at(7); // inside the four bytes of the emoji
        assert_eq!(decode(&[a, b, c], false), vec![event("", "h\u{e9}llo \u{1f600}")]);
    }

    #[test]
    fn the_last_event_is_dispatched_without_its_blank_line() {
        assert_eq!(decode(&[b"data: [DONE]"], false), vec![]);
        assert_eq!(decode(&[b"data: [DONE]"], true), vec![event("", "[DONE]")]);
        assert_eq!(decode(&[b"data: x\n"], true), vec![event("", "x")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        assert_eq!(decode(&[b": ping\nid: 7\nretry: 10\ndata:x\n\n: keep-alive\n\n"], false), vec![event("", "x")]);
    }
}
