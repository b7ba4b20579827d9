//! Logging through `tracing`: human lines by default, JSON with `--log-format json`,
//! always on stderr (stdout carries command output such as a newly created key).
//!
//! Log lines carry text from outside (plugin log lines, tool names, client input). In
//! human lines every control character (C0 and C1, DEL, `\n`, `\r`, ESC) and every bidi
//! or line-separator character is escaped in messages and field values, span fields
//! included, so no input can forge a line or drive the terminal. JSON lines are escaped
//! by the JSON encoder. Both carry the fields of the current span (the request id,
//! route, tenant and key of the request being served).

use std::fmt::{self, Write as _};
use std::io::IsTerminal as _;

use tracing::Subscriber;
use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stderr. Fails on a filter that does not
/// parse.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let subscriber = subscriber(filter, format, std::io::stderr, std::io::stderr().is_terminal())?;
    tracing::subscriber::set_global_default(subscriber).map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// The subscriber [`init`] installs, writing to `writer` (tests capture the log with
/// it); `ansi` colours human lines.
pub fn subscriber<W>(
    filter: &str,
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> Result<Box<dyn Subscriber + Send + Sync>, String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_new(quiet_libraries(filter)).map_err(|e| format!("invalid log filter `{filter}`: {e}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    Ok(match format {
        LogFormat::Human => {
            let fields = tracing_subscriber::fmt::format::debug_fn(escaped_field).delimited(" ");
            Box::new(builder.with_ansi(ansi).fmt_fields(fields).finish())
        }
        LogFormat::Json => {
            Box::new(builder.json().flatten_event(true).with_current_span(true).with_span_list(false).finish())
        }
    })
}

/// Writes one field of a human line: `name=value`, or the bare message, with control
/// characters escaped.
fn escaped_field(writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
    if field.name() != "message" {
        write!(writer, "{}=", field.name())?;
    }
    let mut escaper = Escaper(writer);
    write!(escaper, "{value:?}")
}

/// Escapes what it writes through to the inner writer.
struct Escaper<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaper<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        escape_controls(text, self.0)
    }
}

/// Whether `c` must not reach a log line as it is: control characters (C0, DEL, C1),
/// bidi embedding, override and isolate controls, and line and paragraph separators.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Writes `text` with control characters (C0, DEL, C1), bidi controls and line or
/// paragraph separators as `\n`, `\r`, `\t` or `\u{…}`.
pub fn escape_controls(text: &str, out: &mut impl fmt::Write) -> fmt::Result {
    let mut rest = text;
    while let Some((at, c)) = rest.char_indices().find(|(_, c)| needs_escape(*c)) {
        out.write_str(&rest[..at])?;
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            _ => write!(out, "\\u{{{:x}}}", u32::from(c))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// `filter` plus `rmcp::service=error` unless the filter names rmcp itself: rmcp logs a
/// warning for every JSON-RPC error it answers, so a client sending bad calls in a loop
/// would flood the log (Maestro logs each MCP request and its outcome itself).
fn quiet_libraries(filter: &str) -> String {
    if filter.contains(crate::mcp::LIBRARY_TARGET) {
        filter.to_owned()
    } else {
        format!("{filter},{}", crate::mcp::QUIET_LIBRARY_LOGS)
    }
}

/// The id of one request (HTTP or MCP), in its span and in error bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

/// Ids a thread takes from one read of the OS random source.
const IDS_PER_READ: usize = 64;

/// 12 random bytes for a request id, from a per-thread batch the OS random source fills
/// [`IDS_PER_READ`] ids at a time: one system call per 64 requests rather than one per
/// request (ids are unique, not secret).
fn random_id_bytes() -> [u8; 12] {
    thread_local! {
        static BATCH: std::cell::RefCell<([u8; 12 * IDS_PER_READ], usize)> =
            const { std::cell::RefCell::new(([0; 12 * IDS_PER_READ], IDS_PER_READ)) };
    }
    BATCH.with_borrow_mut(|(bytes, next)| {
        if *next == IDS_PER_READ {
            *bytes = crate::random::random_bytes();
            *next = 0;
        }
        let mut id = [0u8; 12];
        id.copy_from_slice(&bytes[*next * 12..(*next + 1) * 12]);
        *next += 1;
        id
    })
}

/// The span of the HTTP request being served, in the request's extensions: the MCP
/// handler serves a session's requests on the session's task and re-enters it there.
#[derive(Debug, Clone)]
pub struct RequestSpan(pub tracing::Span);

tokio::task_local! {
    static CURRENT_REQUEST: RequestId;
}

impl RequestId {
    /// Longest id accepted from a client.
    pub const MAX_LEN: usize = 64;

    /// A fresh random id (24 hex digits).
    pub fn generate() -> Self {
        Self(hex::encode(random_id_bytes()))
    }

    /// An id a client sent, when well formed: 1 to [`Self::MAX_LEN`] ASCII letters,
    /// digits, `-`, `_`, `.` or `:`.
    pub fn parse(text: &str) -> Option<Self> {
        let well_formed = (1..=Self::MAX_LEN).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        well_formed.then(|| Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the request the current task is serving, if any.
    pub fn current() -> Option<Self> {
        CURRENT_REQUEST.try_with(Clone::clone).ok()
    }

    /// Runs `future` as the serving of this request ([`RequestId::current`] inside it).
    pub async fn scope<F: std::future::Future>(self, future: F) -> F::Output {
        CURRENT_REQUEST.scope(self, future).await
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A log sink in memory, for tests that read what was logged.
#[derive(Debug, Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Captured {
    type Writer = Self;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

/// An error with its causes, `outer: inner: innermost`, for the log (library errors
/// often say little at the top: "storage backend failed").
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmcp_error_warnings_are_quiet_unless_asked_for() {
        let quiet = crate::mcp::QUIET_LIBRARY_LOGS;
        assert_eq!(quiet_libraries("info"), format!("info,{quiet}"));
        assert_eq!(quiet_libraries("debug,rmcp=trace"), "debug,rmcp=trace");
    }

    #[test]
    fn client_request_ids_are_kept_only_when_well_formed() {
        assert!(RequestId::parse("abc-123_x.y:z").is_some());
        assert!(RequestId::parse(&"a".repeat(64)).is_some());
        assert!(RequestId::parse(&"a".repeat(65)).is_none());
        for bad in ["", "has space", "quote\"d", "semi;colon", "new\nline", "ünï"] {
            assert!(RequestId::parse(bad).is_none(), "{bad:?}");
        }
        let generated = RequestId::generate();
        assert_eq!(generated.as_str().len(), 24);
        assert_eq!(RequestId::parse(generated.as_str()), Some(generated));
    }

    #[test]
    fn generated_ids_differ_across_batches_of_the_random_source() {
        let ids: std::collections::HashSet<String> =
            (0..IDS_PER_READ * 3 + 1).map(|_| RequestId::generate().as_str().to_owned()).collect();
        assert_eq!(ids.len(), IDS_PER_READ * 3 + 1);
    }

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        escape_controls(text, &mut out).expect("writes to a string");
        out
    }

    #[test]
    fn escapes_control_bidi_and_separator_characters() {
        assert_eq!(escaped("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(escaped("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escaped("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(escaped("\u{0}\u{7f}\u{85}\u{9b}"), "\\u{0}\\u{7f}\\u{85}\\u{9b}");
        assert_eq!(escaped("\u{202e}evil\u{2066}\u{2028}"), "\\u{202e}evil\\u{2066}\\u{2028}");
    }

    const FORGED: &str = "done\n2026-01-01T00:00:00Z  INFO maestro: admin key created\r\u{1b}[2K\u{202e}";

    #[test]
    fn human_lines_cannot_be_forged_by_messages_or_fields() {
        let captured = Captured::default();
        let subscriber = subscriber("info", LogFormat::Human, captured.clone(), false).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = %"abc\ndef");
            let _entered = span.enter();
            tracing::info!(plugin = %FORGED, quoted = FORGED, "plugin says {FORGED}");
        });
        let text = captured.text();
        assert_eq!(text.lines().count(), 1, "one event is one line: {text:?}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{202e}'), "{text:?}");
        assert!(text.contains("plugin says done\\n2026"), "{text:?}");
        assert!(text.contains("plugin=done\\n"), "{text:?}");
        assert!(text.contains("request_id=abc\\ndef"), "span fields are escaped too: {text:?}");
    }

    #[test]
    fn json_lines_are_escaped_and_carry_the_request_span() {
        let captured = Captured::default();
        let subscriber = subscriber("info", LogFormat::Json, captured.clone(), false).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "r-1");
            let _entered = span.enter();
            tracing::info!(plugin = %FORGED, "plugin says {FORGED}");
        });
        let text = captured.text();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
        assert_eq!(line["message"], format!("plugin says {FORGED}"));
        assert_eq!(line["plugin"], FORGED);
        assert_eq!(line["span"]["request_id"], "r-1");
    }
}
