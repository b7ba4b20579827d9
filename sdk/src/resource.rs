//! Resources: documents a plugin serves by URI over MCP (`resources/list`,
//! `resources/templates/list`, `resources/read`). A [`Resource`] has a fixed URI; a
//! [`ResourceTemplate`] names a family of resources with an RFC 6570 level-1 template
//! (`notes://pages/{page}`) and reads each with the template's parameters ([`Params`]).
//!
//! ```
//! use maestro_sdk::{Body, Params, Resource, ResourceError, ResourceTemplate};
//!
//! let readme = Resource::new("notes://readme", "readme", || Ok(Body::text("# Notes")))
//!     .title("Read me")
//!     .mime_type("text/markdown");
//! let page = ResourceTemplate::new("notes://pages/{page}", "page", |params: &Params| {
//!     match params.get("page") {
//!         Some("intro") => Ok(Body::text("Welcome")),
//!         _ => Err(ResourceError::not_found("no such page")),
//!     }
//! })
//! .mime_type("text/plain");
//! # let plugin = maestro_sdk::Plugin::new().resource(readme).resource_template(page);
//! # assert_eq!(plugin.read_resource("notes://pages/intro").expect("read")[0].text(), Some("Welcome"));
//! ```
//!
//! The host serves URIs exactly as declared, so declare absolute URIs in a scheme of
//! your own (`notes://…`; `maestro:` is the host's), and keep them from overlapping
//! another plugin's: the host refuses a plugin whose URIs could name another plugin's
//! resources. Listings are read once, when the plugin loads; reads run like tool calls,
//! under the reader's policy and limits.

use std::fmt;

use crate::tool::{ResourceContents, base64};

/// Why a read returned nothing; mirrors the WIT `resources.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// No such resource (the client is told "resource not found").
    #[error("not found: {0}")]
    NotFound(String),
    /// The resource exists but could not be read.
    #[error("{0}")]
    Failed(String),
}

impl ResourceError {
    /// `NotFound` from anything printable.
    pub fn not_found(message: impl fmt::Display) -> Self {
        Self::NotFound(message.to_string())
    }

    /// `Failed` from anything printable.
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::Failed(message.to_string())
    }
}

/// What a read function returns: text or bytes (sent base64-encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl Body {
    /// A text body.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// A binary body.
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self::Bytes(bytes.into())
    }
}

impl From<&str> for Body {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

/// One piece of what a read returns: the URI read, the media type and the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    /// The URI.
    pub uri: String,
    /// Its media type.
    pub mime_type: Option<String>,
    /// Text or base64 blob.
    pub data: ResourceContents,
}

impl Contents {
    /// The text, when the contents are text.
    pub fn text(&self) -> Option<&str> {
        match &self.data {
            ResourceContents::Text(text) => Some(text),
            ResourceContents::Blob(_) => None,
        }
    }
}

/// What the host lists for a resource or a template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceInfo {
    /// The URI (a resource) or the URI template (a template).
    pub uri: String,
    /// Short name.
    pub name: String,
    /// Human title.
    pub title: Option<String>,
    /// What it holds.
    pub description: Option<String>,
    /// Media type.
    pub mime_type: Option<String>,
    /// Size in bytes, when known (resources only).
    pub size: Option<u64>,
}

type ReadFn = Box<dyn Fn() -> Result<Body, ResourceError> + Send + Sync>;
type ReadTemplateFn = Box<dyn Fn(&Params) -> Result<Body, ResourceError> + Send + Sync>;

/// A resource with a fixed URI and the function that reads it.
pub struct Resource {
    info: ResourceInfo,
    read: ReadFn,
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Resource {
    /// A resource at `uri` named `name`, read by `read`.
    pub fn new(
        uri: impl Into<String>,
        name: impl Into<String>,
        read: impl Fn() -> Result<Body, ResourceError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            info: ResourceInfo { uri: uri.into(), name: name.into(), ..ResourceInfo::default() },
            read: Box::new(read),
        }
    }

    /// Sets the human title.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.info.title = Some(title.into());
        self
    }

    /// Sets the description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.info.description = Some(description.into());
        self
    }

    /// Sets the media type (also given with every read).
    #[must_use]
    pub fn mime_type(mut self, mime_type: impl Into<String>) -> Self {
        self.info.mime_type = Some(mime_type.into());
        self
    }

    /// Sets the size in bytes.
    #[must_use]
    pub fn size(mut self, size: u64) -> Self {
        self.info.size = Some(size);
        self
    }

    /// What the host lists.
    pub fn info(&self) -> &ResourceInfo {
        &self.info
    }
}

/// A family of resources named by a level-1 URI template, and the function that reads
/// one from the template's parameters.
pub struct ResourceTemplate {
    info: ResourceInfo,
    pattern: Vec<Part>,
    read: ReadTemplateFn,
}

impl fmt::Debug for ResourceTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceTemplate").field("info", &self.info).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Variable(String),
}

/// Splits a template into literals and `{name}` expressions; anything else is refused.
fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').ok_or_else(|| format!("unclosed `{{` in {template:?}"))? + open;
        let name = &rest[open + 1..close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`{{{name}}}` in {template:?}: only {{name}} expressions are supported"));
        }
        if matches!(parts.last(), Some(Part::Variable(_))) {
            return Err(format!("two expressions side by side in {template:?}"));
        }
        parts.push(Part::Variable(name.to_owned()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// Whether `c` may appear in a parameter's value (unreserved characters and `%`).
fn value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '%')
}

/// Matches `uri` against `parts`, collecting the values (shortest first, backtracking).
fn match_parts(parts: &[Part], uri: &str, values: &mut Vec<(String, String)>) -> bool {
    match parts.split_first() {
        None => uri.is_empty(),
        Some((Part::Literal(literal), rest)) => {
            uri.strip_prefix(literal.as_str()).is_some_and(|after| match_parts(rest, after, values))
        }
        Some((Part::Variable(name), rest)) => {
            let run = uri.find(|c: char| !value_char(c)).unwrap_or(uri.len());
            for end in 1..=run {
                values.push((name.clone(), uri[..end].to_owned()));
                if match_parts(rest, &uri[end..], values) {
                    return true;
                }
                values.pop();
            }
            false
        }
    }
}

impl ResourceTemplate {
    /// A template (`notes://pages/{page}`) named `name`, each resource read by `read`.
    ///
    /// # Panics
    /// When the template is not level 1 (only `{name}` expressions): a programming error
    /// any test touching the plugin reveals.
    pub fn new(
        uri_template: impl Into<String>,
        name: impl Into<String>,
        read: impl Fn(&Params) -> Result<Body, ResourceError> + Send + Sync + 'static,
    ) -> Self {
        let uri = uri_template.into();
        let pattern = parse_template(&uri).unwrap_or_else(|e| panic!("invalid resource template: {e}"));
        Self { info: ResourceInfo { uri, name: name.into(), ..ResourceInfo::default() }, pattern, read: Box::new(read) }
    }

    /// Sets the human title.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.info.title = Some(title.into());
        self
    }

    /// Sets the description.
    #[must_use]
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.info.description = Some(description.into());
        self
    }

    /// Sets the media type of its resources (also given with every read).
    #[must_use]
    pub fn mime_type(mut self, mime_type: impl Into<String>) -> Self {
        self.info.mime_type = Some(mime_type.into());
        self
    }

    /// What the host lists (`uri` is the template).
    pub fn info(&self) -> &ResourceInfo {
        &self.info
    }

    /// The parameters when `uri` is one of this template's resources.
    pub fn matches(&self, uri: &str) -> Option<Params> {
        let mut values = Vec::new();
        match_parts(&self.pattern, uri, &mut values).then(|| Params { uri: uri.to_owned(), values })
    }
}

/// A template's parameters for one read: each expression's value as it appears in the
/// URI (percent-escapes kept; [`Params::decoded`] decodes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    uri: String,
    values: Vec<(String, String)>,
}

impl Params {
    /// The URI being read.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The value of expression `name`, as written in the URI.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The value of expression `name`, percent-decoded (`None` when absent or not UTF-8).
    pub fn decoded(&self, name: &str) -> Option<String> {
        let raw = self.get(name)?.as_bytes();
        let mut bytes = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let hex = |b: u8| char::from(b).to_digit(16);
            match (raw[i], raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex)) {
                (b'%', Some(hi), Some(lo)) => {
                    bytes.push(u8::try_from(hi * 16 + lo).unwrap_or(0));
                    i += 3;
                }
                (b, ..) => {
                    bytes.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8(bytes).ok()
    }
}

/// A read's answer: the body with the URI read and the declared media type.
fn contents(uri: &str, mime_type: Option<&String>, body: Body) -> Vec<Contents> {
    let data = match body {
        Body::Text(text) => ResourceContents::Text(text),
        Body::Bytes(bytes) => ResourceContents::Blob(base64(&bytes)),
    };
    vec![Contents { uri: uri.to_owned(), mime_type: mime_type.cloned(), data }]
}

/// Reads `uri` from `resources` (exact URIs first) or `templates` (in order).
pub(crate) fn read(
    resources: &[Resource],
    templates: &[ResourceTemplate],
    uri: &str,
) -> Result<Vec<Contents>, ResourceError> {
    if let Some(resource) = resources.iter().find(|r| r.info.uri == uri) {
        return Ok(contents(uri, resource.info.mime_type.as_ref(), (resource.read)()?));
    }
    for template in templates {
        if let Some(params) = template.matches(uri) {
            return Ok(contents(uri, template.info.mime_type.as_ref(), (template.read)(&params)?));
        }
    }
    Err(ResourceError::NotFound(format!("no resource `{}`", uri.chars().take(256).collect::<String>())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(params: &Params) -> Result<Body, ResourceError> {
        Ok(Body::text(format!("{}:{}", params.get("id").unwrap_or("-"), params.get("part").unwrap_or("-"))))
    }

    #[test]
    fn templates_capture_one_value_per_expression() {
        let t = ResourceTemplate::new("test://template/{id}/data", "data", data);
        let params = t.matches("test://template/123/data").expect("matches");
        assert_eq!((params.get("id"), params.uri()), (Some("123"), "test://template/123/data"));
        assert_eq!(t.matches("test://template/1/2/data"), None, "a value has no slash");
        assert_eq!(t.matches("test://template//data"), None, "a value is never empty");
        let dotted = ResourceTemplate::new("file:///{id}.{part}", "f", data);
        let params = dotted.matches("file:///a.b.c").expect("backtracks");
        assert_eq!((params.get("id"), params.get("part")), (Some("a"), Some("b.c")));
        let escaped = ResourceTemplate::new("n://{id}", "n", data).matches("n://a%20b%2Fc").expect("matches");
        assert_eq!(escaped.decoded("id").as_deref(), Some("a b/c"));
    }

    #[test]
    #[should_panic(expected = "only {name} expressions are supported")]
    fn refuses_templates_beyond_level_one() {
        let _ = ResourceTemplate::new("n://{+path}", "n", data);
    }

    #[test]
    fn reads_exact_uris_first_then_templates_and_reports_unknown_ones() {
        let resources = [Resource::new("n://1/data", "one", || Ok(Body::bytes(*b"\x01"))).mime_type("x/y")];
        let templates = [ResourceTemplate::new("n://{id}/data", "data", data).mime_type("text/plain")];
        let exact = read(&resources, &templates, "n://1/data").expect("exact");
        assert_eq!(exact[0].data, ResourceContents::Blob("AQ==".into()));
        assert_eq!(exact[0].mime_type.as_deref(), Some("x/y"));
        let templated = read(&resources, &templates, "n://2/data").expect("template");
        assert_eq!((templated[0].text(), templated[0].uri.as_str()), (Some("2:-"), "n://2/data"));
        assert!(matches!(read(&resources, &templates, "n://2/meta"), Err(ResourceError::NotFound(_))));
    }
}
