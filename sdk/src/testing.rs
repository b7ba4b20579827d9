//! Run tools natively, without WebAssembly (only on non-`wasm32` targets).
//!
//! Off `wasm32` the host imports are this in-process fake: each test thread has its own
//! configuration, cancellation flag, captured logs and progress, and an HTTP responder.
//! [`FakeHost::install`] resets the thread's fake and hands back a handle to it.
//!
//! ```
//! use maestro_sdk::http::{HttpError, Response};
//! use maestro_sdk::testing::FakeHost;
//!
//! let host = FakeHost::install();
//! host.set_config(serde_json::json!({ "greeting": "hi" }));
//! host.on_http(|request| {
//!     if request.url().starts_with("https://example.com/") {
//!         Ok(Response::new(200, "hello").with_header("content-type", "text/plain"))
//!     } else {
//!         Err(HttpError::denied())
//!     }
//! });
//!
//! maestro_sdk::log::info("starting");
//! let body = maestro_sdk::http::get("https://example.com/").send().expect("allowed").text();
//! assert_eq!(body, "hello");
//! assert!(maestro_sdk::http::get("https://evil.test/").send().expect_err("denied").is_denied());
//! assert_eq!(host.logs()[0].message, "starting");
//! ```

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use serde_json::Value;

use crate::host::LogLevel;
use crate::http::{HttpError, Request, Response};
use crate::model::{Completion, ModelError, Request as ModelRequest};
use crate::tool::{ErasedTool, Tool, ToolError, ToolOutput};
use crate::user::{Answer, UserError};

/// A log line a tool wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: LogLevel,
    /// Its message.
    pub message: String,
}

/// A progress report a tool made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressRecord {
    /// Units done.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// What is happening.
    pub message: Option<String>,
}

type Responder = Rc<dyn Fn(&Request) -> Result<Response, HttpError>>;
type Completer = Rc<dyn Fn(&ModelRequest) -> Result<Completion, ModelError>>;
type Asker = Rc<dyn Fn(&str, &Value) -> Result<Answer, UserError>>;

struct State {
    config: String,
    cancelled: bool,
    logs: Vec<LogRecord>,
    progress: Vec<ProgressRecord>,
    responder: Option<Responder>,
    requests: Vec<Request>,
    completer: Option<Completer>,
    completions: Vec<ModelRequest>,
    asker: Option<Asker>,
    questions: Vec<(String, Value)>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            config: "{}".to_owned(),
            cancelled: false,
            logs: Vec::new(),
            progress: Vec::new(),
            responder: None,
            requests: Vec::new(),
            completer: None,
            completions: Vec::new(),
            asker: None,
            questions: Vec::new(),
        }
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|state| f(&mut state.borrow_mut()))
}

/// A handle to this thread's fake host. Not `Send`: the fake is per thread, so tests
/// running in parallel do not see each other.
pub struct FakeHost {
    _per_thread: PhantomData<*const ()>,
}

impl fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        with(|s| {
            f.debug_struct("FakeHost")
                .field("config", &s.config)
                .field("cancelled", &s.cancelled)
                .field("logs", &s.logs.len())
                .field("progress", &s.progress.len())
                .field("requests", &s.requests.len())
                .finish()
        })
    }
}

impl FakeHost {
    /// Resets this thread's fake (config `{}`, not cancelled, nothing captured, every
    /// HTTP request refused with `HTTP-request-denied`) and returns a handle to it.
    pub fn install() -> Self {
        with(|s| *s = State::default());
        Self { _per_thread: PhantomData }
    }

    /// Sets the plugin configuration [`config`](crate::config) returns.
    pub fn set_config(&self, config: Value) {
        self.set_config_json(config.to_string());
    }

    /// Sets the raw configuration document (may be invalid JSON, to test errors).
    pub fn set_config_json(&self, json: impl Into<String>) {
        let json = json.into();
        with(|s| s.config = json);
    }

    /// Sets the cancellation flag [`cancelled`](crate::cancelled) returns.
    pub fn set_cancelled(&self, cancelled: bool) {
        with(|s| s.cancelled = cancelled);
    }

    /// Cancels the current call.
    pub fn cancel(&self) {
        self.set_cancelled(true);
    }

    /// Answers outgoing HTTP requests with `responder` (the SDK applies the request's
    /// response cap afterwards, as the real client does).
    pub fn on_http(&self, responder: impl Fn(&Request) -> Result<Response, HttpError> + 'static) {
        with(|s| s.responder = Some(Rc::new(responder)));
    }

    /// The log lines written so far.
    pub fn logs(&self) -> Vec<LogRecord> {
        with(|s| s.logs.clone())
    }

    /// The progress reports made so far.
    pub fn progress(&self) -> Vec<ProgressRecord> {
        with(|s| s.progress.clone())
    }

    /// The HTTP requests sent so far.
    pub fn requests(&self) -> Vec<Request> {
        with(|s| s.requests.clone())
    }

    /// Answers completion requests ([`model::complete`](crate::model::complete)) with
    /// `completer`. Without one, every request is [`ModelError::Denied`], as on a host
    /// whose policy grants no model access.
    pub fn on_complete(&self, completer: impl Fn(&ModelRequest) -> Result<Completion, ModelError> + 'static) {
        with(|s| s.completer = Some(Rc::new(completer)));
    }

    /// The completion requests made so far.
    pub fn completions(&self) -> Vec<ModelRequest> {
        with(|s| s.completions.clone())
    }

    /// Answers questions ([`user::ask`](crate::user::ask)) with `asker` (given the
    /// message and the schema). Without one, every question fails with
    /// [`UserError::NeedsInput`], as where nobody can be asked.
    pub fn on_ask(&self, asker: impl Fn(&str, &Value) -> Result<Answer, UserError> + 'static) {
        with(|s| s.asker = Some(Rc::new(asker)));
    }

    /// The questions asked so far, as `(message, schema)`.
    pub fn questions(&self) -> Vec<(String, Value)> {
        with(|s| s.questions.clone())
    }
}

/// Calls a tool with JSON arguments the way the host does: the arguments are
/// serialised, validated and deserialised into the tool's input type.
pub fn call<T: Tool>(tool: &T, arguments: Value) -> Result<ToolOutput, ToolError> {
    tool.call_json(&arguments.to_string())
}

/// The fake behind the host imports.
pub(crate) mod sys {
    use super::{LogRecord, ProgressRecord, with};
    use crate::host::LogLevel;
    use crate::http::{HttpError, Request, Response, Target};

    pub(crate) fn log(level: LogLevel, message: &str) {
        eprintln!("[plugin {level:?}] {message}");
        with(|s| {
            s.logs.push(LogRecord { level, message: message.to_owned() });
        });
    }

    pub(crate) fn progress(done: u64, total: Option<u64>, message: Option<&str>) {
        with(|s| {
            s.progress.push(ProgressRecord { done, total, message: message.map(str::to_owned) });
        });
    }

    pub(crate) fn cancelled() -> bool {
        with(|s| s.cancelled)
    }

    pub(crate) fn config() -> String {
        with(|s| s.config.clone())
    }

    pub(crate) fn http_send(request: &Request, _target: &Target) -> Result<Response, HttpError> {
        let responder = with(|s| {
            s.requests.push(request.clone());
            s.responder.clone()
        });
        // Called outside the borrow, so a responder may itself use the fake.
        let response = match responder {
            Some(responder) => responder(request)?,
            None => return Err(HttpError::denied()),
        };
        Ok(response.truncate(request.response_limit()))
    }

    pub(crate) fn complete(
        request: &crate::model::Request,
    ) -> Result<crate::model::Completion, crate::model::ModelError> {
        let completer = with(|s| {
            s.completions.push(request.clone());
            s.completer.clone()
        });
        match completer {
            Some(completer) => completer(request),
            None => Err(crate::model::ModelError::Denied("the fake host has no model (FakeHost::on_complete)".into())),
        }
    }

    pub(crate) fn ask(
        message: &str,
        schema: &serde_json::Value,
    ) -> Result<crate::user::Answer, crate::user::UserError> {
        let asker = with(|s| {
            s.questions.push((message.to_owned(), schema.clone()));
            s.asker.clone()
        });
        match asker {
            Some(asker) => asker(message, schema),
            None => Err(crate::user::UserError::NeedsInput(message.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_install_starts_from_a_clean_fake() {
        let host = FakeHost::install();
        host.cancel();
        crate::log::warn("x");
        crate::progress(1, Some(2), Some("half"));
        assert!(crate::cancelled());
        let host = FakeHost::install();
        assert!(!crate::cancelled());
        assert!(host.logs().is_empty());
        assert!(host.progress().is_empty());
        assert_eq!(crate::config_json(), "{}");
    }

    #[test]
    fn captures_logs_and_progress() {
        let host = FakeHost::install();
        crate::log::error("bad");
        crate::progress(3, None, None);
        assert_eq!(host.logs(), vec![LogRecord { level: LogLevel::Error, message: "bad".into() }]);
        assert_eq!(host.progress(), vec![ProgressRecord { done: 3, total: None, message: None }]);
    }

    #[test]
    fn config_deserialises_or_fails_clearly() {
        #[derive(serde::Deserialize)]
        struct Config {
            limit: u32,
        }
        let host = FakeHost::install();
        host.set_config(serde_json::json!({ "limit": 7 }));
        assert_eq!(crate::config::<Config>().expect("fits").limit, 7);
        host.set_config_json("{\"limit\": \"many\"}");
        let err = crate::config::<Config>().err().expect("does not fit");
        assert!(err.to_string().starts_with("invalid plugin configuration"), "{err}");
    }

    #[test]
    fn http_is_denied_without_a_responder_and_capped_with_one() {
        let host = FakeHost::install();
        let err = crate::http::get("https://example.com/").send().expect_err("denied");
        assert!(err.is_denied());
        host.on_http(|_| Ok(Response::new(200, vec![b'x'; 100])));
        let response =
            crate::http::post("https://example.com/").body("hi").max_response_bytes(10).send().expect("answered");
        assert_eq!(response.body.len(), 10);
        assert!(response.truncated);
        assert_eq!(host.requests().len(), 2);
        assert_eq!(host.requests()[1].body_bytes(), b"hi");
    }

    #[test]
    fn completions_are_denied_without_a_completer_and_recorded_with_one() {
        use crate::model::{self, Request};
        let host = FakeHost::install();
        let request = Request::new(crate::ModelTier::Small, 10).user("hi");
        assert!(matches!(model::complete(&request), Err(ModelError::Denied(_))));
        host.on_complete(|_| Ok(Completion::structured(serde_json::json!({ "n": 3 }))));
        #[derive(serde::Deserialize, schemars::JsonSchema)]
        struct N {
            n: u32,
        }
        let (typed, answer) = model::complete_as::<N>(request).expect("answered");
        assert_eq!((typed.n, answer.model.as_str()), (3, "fake"));
        let asked = host.completions();
        assert_eq!(asked.len(), 2);
        assert!(asked[1].schema.is_some(), "complete_as sends the schema of its type");
        let cancelled: crate::ToolError = ModelError::Cancelled.into();
        assert_eq!(cancelled, crate::ToolError::Cancelled);
    }
}
