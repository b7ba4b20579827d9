//! Tools: typed functions the host exposes as `<plugin>.<tool>`.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Why a tool call failed; mirrors the WIT `tool-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The arguments do not fit the input schema or are otherwise invalid.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// No tool by that name in this plugin.
    #[error("no tool named `{0}`")]
    NotFound(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
    /// The tool noticed [`cancelled`](crate::cancelled) and stopped.
    #[error("cancelled")]
    Cancelled,
}

impl ToolError {
    /// `InvalidArguments` from anything printable.
    pub fn invalid(message: impl fmt::Display) -> Self {
        Self::InvalidArguments(message.to_string())
    }

    /// `Failed` from anything printable.
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::Failed(message.to_string())
    }

    /// `Err(Cancelled)` when the caller has cancelled the call, for use with `?` in loops.
    pub fn check_cancelled() -> Result<(), Self> {
        if crate::cancelled() { Err(Self::Cancelled) } else { Ok(()) }
    }
}

impl From<crate::http::HttpError> for ToolError {
    fn from(error: crate::http::HttpError) -> Self {
        Self::Failed(error.to_string())
    }
}

/// Behaviour hints for clients (MCP tool annotations). All `false` by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Annotations {
    /// The tool does not modify anything.
    pub read_only: bool,
    /// The tool may destroy or overwrite data.
    pub destructive: bool,
    /// Calling it twice with the same arguments has the effect of calling it once.
    pub idempotent: bool,
    /// The tool reaches outside systems (e.g. the web).
    pub open_world: bool,
}

/// What a tool tells the host about itself, apart from its schemas (which the SDK
/// derives from the input and output types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInfo {
    /// Name within the plugin: `^[A-Za-z0-9_-]{1,48}$`.
    pub name: String,
    /// Short human title.
    pub title: Option<String>,
    /// What the tool does, for people and models.
    pub description: String,
    /// Behaviour hints.
    pub annotations: Annotations,
}

impl ToolInfo {
    /// A tool with a name and a description, no title and no annotations.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self { name: name.into(), title: None, description: description.into(), annotations: Annotations::default() }
    }

    /// Sets the human title.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Marks the tool read-only.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.annotations.read_only = true;
        self
    }

    /// Marks the tool destructive.
    #[must_use]
    pub fn destructive(mut self) -> Self {
        self.annotations.destructive = true;
        self
    }

    /// Marks the tool idempotent.
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.annotations.idempotent = true;
        self
    }

    /// Marks the tool as reaching outside systems.
    #[must_use]
    pub fn open_world(mut self) -> Self {
        self.annotations.open_world = true;
        self
    }
}

/// The full description of a tool as the host sees it (the WIT `tool-spec`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Name within the plugin.
    pub name: String,
    /// Short human title.
    pub title: Option<String>,
    /// What the tool does.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub input_schema: Value,
    /// JSON Schema of [`ToolOutput::structured`], when the tool returns structured data.
    pub output_schema: Option<Value>,
    /// Behaviour hints.
    pub annotations: Annotations,
}

/// One piece of a tool's result (the WIT `content`).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// A JSON document.
    Json(Value),
    /// An image.
    Image {
        /// Base64 (standard alphabet, padded) of the bytes.
        data: String,
        /// e.g. `image/png`.
        mime_type: String,
    },
    /// A link to a resource the client may fetch.
    ResourceLink {
        /// Where the resource is.
        uri: String,
        /// Its name.
        name: String,
        /// What it is.
        description: Option<String>,
        /// Its media type.
        mime_type: Option<String>,
    },
    /// Audio.
    Audio {
        /// Base64 (standard alphabet, padded) of the bytes.
        data: String,
        /// e.g. `audio/wav`.
        mime_type: String,
    },
    /// A resource whose contents travel inside the result (an MCP embedded resource).
    EmbeddedResource {
        /// The resource's URI.
        uri: String,
        /// Its media type.
        mime_type: Option<String>,
        /// What it holds.
        contents: ResourceContents,
    },
}

/// The contents of an embedded resource (the WIT `resource-contents`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceContents {
    /// Text.
    Text(String),
    /// Binary, as base64 (standard alphabet, padded).
    Blob(String),
}

impl Content {
    /// Text content.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// An image from raw bytes (base64-encoded here).
    pub fn image(bytes: &[u8], mime_type: impl Into<String>) -> Self {
        Self::Image { data: base64(bytes), mime_type: mime_type.into() }
    }

    /// A link to a resource.
    pub fn resource_link(uri: impl Into<String>, name: impl Into<String>) -> Self {
        Self::ResourceLink { uri: uri.into(), name: name.into(), description: None, mime_type: None }
    }

    /// Audio from raw bytes (base64-encoded here).
    pub fn audio(bytes: &[u8], mime_type: impl Into<String>) -> Self {
        Self::Audio { data: base64(bytes), mime_type: mime_type.into() }
    }

    /// An embedded text resource.
    pub fn embedded_text(uri: impl Into<String>, mime_type: impl Into<String>, text: impl Into<String>) -> Self {
        Self::EmbeddedResource {
            uri: uri.into(),
            mime_type: Some(mime_type.into()),
            contents: ResourceContents::Text(text.into()),
        }
    }

    /// An embedded binary resource from raw bytes (base64-encoded here).
    pub fn embedded_blob(uri: impl Into<String>, mime_type: impl Into<String>, bytes: &[u8]) -> Self {
        Self::EmbeddedResource {
            uri: uri.into(),
            mime_type: Some(mime_type.into()),
            contents: ResourceContents::Blob(base64(bytes)),
        }
    }
}

/// What a successful call returns (the WIT `tool-output`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolOutput {
    /// Content for people and models.
    pub content: Vec<Content>,
    /// Structured result matching the tool's output schema.
    pub structured: Option<Value>,
}

impl ToolOutput {
    /// One text item.
    pub fn text(text: impl Into<String>) -> Self {
        Self { content: vec![Content::text(text)], structured: None }
    }

    /// Structured data, also given as a JSON content item for clients that read only
    /// content.
    pub fn structured(value: Value) -> Self {
        Self { content: vec![Content::Json(value.clone())], structured: Some(value) }
    }

    /// Adds a content item.
    #[must_use]
    pub fn with(mut self, content: Content) -> Self {
        self.content.push(content);
        self
    }

    /// The text of every text item, joined by newlines (handy in tests).
    pub fn text_content(&self) -> String {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|c| match c {
                Content::Text(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        texts.join("\n")
    }
}

/// A value a tool may return: turns into a [`ToolOutput`] and may declare an output
/// schema.
pub trait IntoToolOutput {
    /// JSON Schema of the structured output, if any.
    fn output_schema() -> Option<Value> {
        None
    }

    /// Converts the value.
    fn into_tool_output(self) -> Result<ToolOutput, ToolError>;
}

impl IntoToolOutput for ToolOutput {
    fn into_tool_output(self) -> Result<ToolOutput, ToolError> {
        Ok(self)
    }
}

impl IntoToolOutput for String {
    fn into_tool_output(self) -> Result<ToolOutput, ToolError> {
        Ok(ToolOutput::text(self))
    }
}

impl IntoToolOutput for &'static str {
    fn into_tool_output(self) -> Result<ToolOutput, ToolError> {
        Ok(ToolOutput::text(self))
    }
}

/// Typed structured output: the SDK derives the output schema from `T` and returns the
/// value as `structured` (and as a JSON content item). `T` should serialise to a JSON
/// object, as MCP requires of structured results.
#[derive(Debug, Clone, PartialEq)]
pub struct Structured<T>(pub T);

impl<T: Serialize + JsonSchema> IntoToolOutput for Structured<T> {
    fn output_schema() -> Option<Value> {
        Some(schema_of::<T>())
    }

    fn into_tool_output(self) -> Result<ToolOutput, ToolError> {
        let value = serde_json::to_value(&self.0)
            .map_err(|e| ToolError::failed(format!("cannot serialise the result: {e}")))?;
        Ok(ToolOutput::structured(value))
    }
}

/// Readable text for people and models, plus typed structured data: the content is the
/// text alone (not the JSON), the structured result is the value.
impl<T: Serialize + JsonSchema> IntoToolOutput for (String, Structured<T>) {
    fn output_schema() -> Option<Value> {
        Structured::<T>::output_schema()
    }

    fn into_tool_output(self) -> Result<ToolOutput, ToolError> {
        let (text, structured) = self;
        let mut output = structured.into_tool_output()?;
        output.content = vec![Content::Text(text)];
        Ok(output)
    }
}

/// The input of a tool that takes no arguments (schema: an empty object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, JsonSchema)]
pub struct NoInput {}

/// A tool: typed input, typed output.
///
/// Most tools are plain functions wrapped with [`tool`]; implement this trait directly
/// for a tool that carries state or computes its description.
pub trait Tool: Send + Sync + 'static {
    /// The arguments object; its JSON Schema is the tool's input schema.
    type Input: DeserializeOwned + JsonSchema;
    /// What a call returns.
    type Output: IntoToolOutput;

    /// Name, title, description and annotations.
    fn info(&self) -> ToolInfo;

    /// The tool's name, as in [`info`](Tool::info). The default builds the whole info;
    /// override it when the name is at hand: the `tools.call` export of a fresh
    /// instance looks the called tool up by name among every tool ([`Dispatch`]).
    fn name(&self) -> Cow<'_, str> {
        Cow::Owned(self.info().name)
    }

    /// Runs the tool on arguments that already fit `Input`.
    fn call(&self, input: Self::Input) -> Result<Self::Output, ToolError>;
}

/// A tool made from a function; see [`tool`].
///
/// It keeps its name, description and title as given (a `&'static str` is not copied),
/// so building one costs nothing: the `tools.call` export of a fresh instance builds
/// every tool of the plugin to find the one called ([`Dispatch`]).
pub struct FnTool<I, O, F> {
    name: Cow<'static, str>,
    title: Option<Cow<'static, str>>,
    description: Cow<'static, str>,
    annotations: Annotations,
    function: F,
    types: PhantomData<fn(I) -> O>,
}

impl<I, O, F> fmt::Debug for FnTool<I, O, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTool")
            .field("name", &self.name)
            .field("title", &self.title)
            .field("description", &self.description)
            .field("annotations", &self.annotations)
            .finish()
    }
}

/// Declares a tool from a function taking its typed arguments.
///
/// ```
/// use maestro_sdk::{tool, ToolError};
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Args { name: String }
///
/// fn greet(args: Args) -> Result<String, ToolError> {
///     Ok(format!("hello, {}", args.name))
/// }
///
/// let greet = tool("greet", "Greets someone", greet).title("Greeter").read_only();
/// # let _ = greet;
/// ```
pub fn tool<I, O, F>(
    name: impl Into<Cow<'static, str>>,
    description: impl Into<Cow<'static, str>>,
    function: F,
) -> FnTool<I, O, F>
where
    I: DeserializeOwned + JsonSchema + 'static,
    O: IntoToolOutput + 'static,
    F: Fn(I) -> Result<O, ToolError> + Send + Sync + 'static,
{
    FnTool {
        name: name.into(),
        title: None,
        description: description.into(),
        annotations: Annotations::default(),
        function,
        types: PhantomData,
    }
}

impl<I, O, F> FnTool<I, O, F> {
    /// Sets the human title.
    #[must_use]
    pub fn title(mut self, title: impl Into<Cow<'static, str>>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Sets all annotations at once.
    #[must_use]
    pub fn annotations(mut self, annotations: Annotations) -> Self {
        self.annotations = annotations;
        self
    }

    /// Marks the tool read-only.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.annotations.read_only = true;
        self
    }

    /// Marks the tool destructive.
    #[must_use]
    pub fn destructive(mut self) -> Self {
        self.annotations.destructive = true;
        self
    }

    /// Marks the tool idempotent.
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.annotations.idempotent = true;
        self
    }

    /// Marks the tool as reaching outside systems.
    #[must_use]
    pub fn open_world(mut self) -> Self {
        self.annotations.open_world = true;
        self
    }
}

impl<I, O, F> Tool for FnTool<I, O, F>
where
    I: DeserializeOwned + JsonSchema + 'static,
    O: IntoToolOutput + 'static,
    F: Fn(I) -> Result<O, ToolError> + Send + Sync + 'static,
{
    type Input = I;
    type Output = O;

    fn info(&self) -> ToolInfo {
        ToolInfo {
            name: self.name.clone().into_owned(),
            title: self.title.clone().map(Cow::into_owned),
            description: self.description.clone().into_owned(),
            annotations: self.annotations,
        }
    }

    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.name)
    }

    fn call(&self, input: I) -> Result<O, ToolError> {
        (self.function)(input)
    }
}

/// One call of a tool chosen by name from a list of tools, building nothing else: no
/// registry, no boxing, no specs or schemas. It is what [`export_plugin!`](crate::export_plugin)'s
/// `tools.call` export runs on a fresh instance (one instance usually serves one call);
/// hand-written exports use it the same way.
///
/// ```
/// use maestro_sdk::{Dispatch, NoInput, ToolError, tool};
///
/// fn ping(_: NoInput) -> Result<&'static str, ToolError> {
///     Ok("pong")
/// }
///
/// let out = Dispatch::new("ping", "{}")
///     .tool(tool("echo", "Echoes", |args: serde_json::Map<String, serde_json::Value>| {
///         Ok(maestro_sdk::ToolOutput::structured(args.into()))
///     }))
///     .tool(tool("ping", "Answers pong", ping))
///     .finish();
/// assert_eq!(out.expect("pong").text_content(), "pong");
/// let missing = Dispatch::new("nope", "{}").tool(tool("ping", "Answers pong", ping)).finish();
/// assert_eq!(missing, Err(ToolError::NotFound("nope".into())));
/// ```
#[derive(Debug)]
#[must_use = "the call's result is in `finish()`"]
pub struct Dispatch<'a> {
    name: &'a str,
    arguments: &'a str,
    result: Option<Result<ToolOutput, ToolError>>,
}

impl<'a> Dispatch<'a> {
    /// A call of the tool `name` with `arguments` (a JSON object document).
    pub fn new(name: &'a str, arguments: &'a str) -> Self {
        Self { name, arguments, result: None }
    }

    /// Offers a tool: the first one named as the call runs, the others are dropped.
    #[inline]
    pub fn tool(mut self, tool: impl Tool) -> Self {
        if self.result.is_none() && Tool::name(&tool) == self.name {
            self.result = Some(run(tool, self.arguments));
        }
        self
    }

    /// The called tool's result, or [`ToolError::NotFound`] when no tool had the name.
    pub fn finish(self) -> Result<ToolOutput, ToolError> {
        self.result.unwrap_or_else(|| Err(ToolError::NotFound(self.name.to_owned())))
    }
}

/// Runs the tool a [`Dispatch`] chose; out of line, so that offering a tool is only the
/// comparison of its name.
#[inline(never)]
fn run<T: Tool>(tool: T, arguments: &str) -> Result<ToolOutput, ToolError> {
    tool.call_json(arguments)
}

/// What a plugin's tools are added to: the [`Plugin`](crate::Plugin) registry or one
/// call's [`Dispatch`]. A function generic over it lists the tools once for both:
///
/// ```
/// use maestro_sdk::{Dispatch, NoInput, Plugin, ToolError, ToolSet, tool};
///
/// fn tools<S: ToolSet>(set: S) -> S {
///     set.tool(tool("ping", "Answers pong", |_: NoInput| Ok::<_, ToolError>("pong")))
/// }
///
/// let plugin = tools(Plugin::new());
/// assert_eq!(plugin.tool_specs().len(), 1);
/// let out = tools(Dispatch::new("ping", "")).finish().expect("pong");
/// assert_eq!(out.text_content(), "pong");
/// ```
pub trait ToolSet: Sized {
    /// Adds a tool.
    #[must_use]
    fn tool(self, tool: impl Tool) -> Self;
}

impl ToolSet for Dispatch<'_> {
    fn tool(self, tool: impl Tool) -> Self {
        Dispatch::tool(self, tool)
    }
}

/// A tool with its types erased, as the plugin registry holds it.
pub(crate) trait ErasedTool: Send + Sync {
    fn name(&self) -> Cow<'_, str>;
    fn spec(&self) -> ToolSpec;
    fn call_json(&self, arguments: &str) -> Result<ToolOutput, ToolError>;
}

impl<T: Tool> ErasedTool for T {
    fn name(&self) -> Cow<'_, str> {
        Tool::name(self)
    }

    fn spec(&self) -> ToolSpec {
        let info = self.info();
        ToolSpec {
            name: info.name,
            title: info.title,
            description: info.description,
            input_schema: schema_of::<T::Input>(),
            output_schema: T::Output::output_schema(),
            annotations: info.annotations,
        }
    }

    fn call_json(&self, arguments: &str) -> Result<ToolOutput, ToolError> {
        let input = parse_arguments::<T::Input>(arguments)?;
        self.call(input)?.into_tool_output()
    }
}

/// Deserialises a tool's arguments, with errors that say what is wrong and where.
pub(crate) fn parse_arguments<I: DeserializeOwned>(arguments: &str) -> Result<I, ToolError> {
    // An object document goes straight into `I`, without building a `Value` first. Any
    // failure takes the path below, which accepts what it always did (e.g. a repeated
    // key, the last one winning) and says what is wrong.
    if arguments.trim_start().starts_with('{')
        && let Ok(input) = serde_json::from_str(arguments)
    {
        return Ok(input);
    }
    let arguments = if arguments.trim().is_empty() { "{}" } else { arguments };
    let value: Value = serde_json::from_str(arguments)
        .map_err(|e| ToolError::invalid(format!("arguments are not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ToolError::invalid(format!("arguments must be a JSON object, got {}", json_kind(&value))));
    }
    serde_json::from_value(value).map_err(|e| ToolError::invalid(e.to_string()))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The JSON Schema of `T` (draft 2020-12), as a JSON value. Subschemas are inlined
/// (no `$ref`, except for recursive types), which clients and models handle best.
pub fn schema_of<T: JsonSchema>() -> Value {
    schemars::generate::SchemaSettings::draft2020_12()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn content_helpers_encode_binary_as_base64() {
        assert_eq!(
            Content::audio(b"RIFF", "audio/wav"),
            Content::Audio { data: "UklGRg==".into(), mime_type: "audio/wav".into() }
        );
        assert_eq!(
            Content::embedded_blob("test://b", "application/octet-stream", b"fo"),
            Content::EmbeddedResource {
                uri: "test://b".into(),
                mime_type: Some("application/octet-stream".into()),
                contents: ResourceContents::Blob("Zm8=".into()),
            }
        );
        assert_eq!(
            Content::embedded_text("test://t", "text/plain", "hi"),
            Content::EmbeddedResource {
                uri: "test://t".into(),
                mime_type: Some("text/plain".into()),
                contents: ResourceContents::Text("hi".into()),
            }
        );
    }

    #[derive(Debug, serde::Deserialize, JsonSchema)]
    struct Args {
        #[allow(dead_code)]
        n: u32,
    }

    #[test]
    fn rejects_arguments_that_are_not_an_object() {
        let err = parse_arguments::<Args>("[1]").expect_err("array");
        assert_eq!(err, ToolError::invalid("arguments must be a JSON object, got an array"));
        let err = parse_arguments::<Args>("{").expect_err("broken");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn names_the_missing_or_mistyped_field() {
        let err = parse_arguments::<Args>("{}").expect_err("missing");
        assert!(err.to_string().contains("missing field `n`"), "{err}");
        let err = parse_arguments::<Args>(r#"{"n":"x"}"#).expect_err("mistyped");
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    /// A tool that knows its name but refuses to describe itself: dispatching a call
    /// must never need its info, schemas or specs.
    struct Counted {
        name: &'static str,
        calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Tool for Counted {
        type Input = NoInput;
        type Output = &'static str;

        fn info(&self) -> ToolInfo {
            panic!("dispatch asked `{}` for its info", self.name)
        }

        fn name(&self) -> Cow<'_, str> {
            Cow::Borrowed(self.name)
        }

        fn call(&self, _: NoInput) -> Result<&'static str, ToolError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(self.name)
        }
    }

    #[test]
    fn dispatch_runs_the_first_tool_of_that_name_and_describes_none() {
        let calls: Vec<_> = (0..3).map(|_| std::sync::Arc::default()).collect();
        let counted = |i: usize, name| Counted { name, calls: std::sync::Arc::clone(&calls[i]) };
        let out = Dispatch::new("b", "{}")
            .tool(counted(0, "a"))
            .tool(counted(1, "b"))
            .tool(counted(2, "b"))
            .finish()
            .expect("b runs");
        assert_eq!(out.text_content(), "b");
        let counts: Vec<usize> = calls.iter().map(|c| c.load(std::sync::atomic::Ordering::SeqCst)).collect();
        assert_eq!(counts, [0, 1, 0]);
        // The registry, too, holds and calls tools by name without their info.
        let plugin = crate::Plugin::new().tool(counted(0, "a")).tool(counted(1, "b"));
        assert_eq!(plugin.call("a", "").expect("a runs").text_content(), "a");
        assert_eq!(calls[0].load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn dispatch_answers_like_the_registry() {
        let tools = |set: crate::Plugin| set.tool(tool("n", "takes n", |a: Args| Ok(a.n.to_string())));
        let dispatch = |name: &str, args: &str| {
            Dispatch::new(name, args).tool(tool("n", "takes n", |a: Args| Ok(a.n.to_string()))).finish()
        };
        let plugin = tools(crate::Plugin::new());
        for (name, args) in [("n", r#"{"n":4}"#), ("n", "{}"), ("n", "[4]"), ("n", "{"), ("n", ""), ("m", "{}")] {
            assert_eq!(dispatch(name, args), plugin.call(name, args), "{name} {args}");
        }
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        #[derive(Debug, serde::Deserialize)]
        struct Args {
            n: u32,
        }
        assert_eq!(parse_arguments::<Args>(r#"{"n":1,"n":2}"#).expect("last wins").n, 2);
        assert_eq!(parse_arguments::<Args>(r#" {"n":3} "#).expect("whitespace").n, 3);
    }

    #[test]
    fn empty_arguments_mean_an_empty_object() {
        parse_arguments::<NoInput>("").expect("empty is {}");
        let schema = schema_of::<NoInput>();
        assert_eq!(schema["type"], "object");
    }
}
