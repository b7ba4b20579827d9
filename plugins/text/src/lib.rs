//! `text`: counting, regex extraction, JSON queries and diffs.

use std::time::Duration;

use maestro_sdk::{Structured, ToolError, ToolOutput, export_plugin, tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Longest input text accepted by any tool, in bytes.
const MAX_TEXT: usize = 8 * 1024 * 1024;
/// Longest regex pattern, in bytes.
const MAX_PATTERN: usize = 2048;
/// Compiled-regex size limits (bytes), against patterns that explode.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const REGEX_DFA_LIMIT: usize = 2 << 20;
const REGEX_NEST_LIMIT: u32 = 64;
const DEFAULT_MAX_MATCHES: usize = 100;
const MAX_MATCHES: usize = 10_000;
const MAX_CONTEXT: usize = 1000;
/// A diff gives up refining after this long and returns a coarser (still correct) diff.
const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

fn check_len(name: &str, text: &str) -> Result<(), ToolError> {
    if text.len() > MAX_TEXT {
        return Err(ToolError::invalid(format!("`{name}` is {} bytes, at most {MAX_TEXT}", text.len())));
    }
    Ok(())
}

// ---------------------------------------------------------------- count

/// Arguments of `count`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CountArgs {
    /// The text to measure.
    text: String,
}

/// Result of `count`.
#[derive(Debug, PartialEq, Eq, Serialize, JsonSchema)]
struct Counts {
    /// Runs of non-whitespace characters.
    words: usize,
    /// Unicode scalar values.
    chars: usize,
    /// Lines (a final line without a newline counts; an empty text has none).
    lines: usize,
    /// UTF-8 bytes.
    bytes: usize,
}

fn count(args: CountArgs) -> Result<Structured<Counts>, ToolError> {
    check_len("text", &args.text)?;
    let text = &args.text;
    Ok(Structured(Counts {
        words: text.split_whitespace().count(),
        chars: text.chars().count(),
        lines: text.lines().count(),
        bytes: text.len(),
    }))
}

// ---------------------------------------------------------------- regex_extract

/// A capture group, by index or by name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Group {
    /// Group number (0 is the whole match).
    Index(usize),
    /// Group name, from `(?P<name>…)`.
    Name(String),
}

/// Arguments of `regex_extract`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RegexArgs {
    /// A regular expression (Rust `regex` syntax: no look-around or backreferences).
    pattern: String,
    /// The text to search.
    text: String,
    /// Return this capture group instead of the whole match (index or name).
    #[serde(default)]
    group: Option<Group>,
    /// Most matches to return (default 100, at most 10000).
    #[serde(default)]
    max_matches: Option<usize>,
    /// Match case-insensitively.
    #[serde(default)]
    case_insensitive: bool,
}

/// One match.
#[derive(Debug, PartialEq, Eq, Serialize, JsonSchema)]
struct Match {
    /// The matched text (or the group's).
    text: String,
    /// Byte offset where it starts.
    start: usize,
    /// Byte offset where it ends.
    end: usize,
}

/// Result of `regex_extract`.
#[derive(Debug, Serialize, JsonSchema)]
struct Extracted {
    /// The matches, in order.
    matches: Vec<Match>,
    /// Whether more matches were left out because of `max_matches`.
    truncated: bool,
}

fn regex_extract(args: RegexArgs) -> Result<Structured<Extracted>, ToolError> {
    check_len("text", &args.text)?;
    if args.pattern.len() > MAX_PATTERN {
        return Err(ToolError::invalid(format!("pattern is longer than {MAX_PATTERN} bytes")));
    }
    let max = args.max_matches.unwrap_or(DEFAULT_MAX_MATCHES);
    if max == 0 || max > MAX_MATCHES {
        return Err(ToolError::invalid(format!("max_matches must be 1..={MAX_MATCHES}")));
    }
    let regex = regex::RegexBuilder::new(&args.pattern)
        .case_insensitive(args.case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .nest_limit(REGEX_NEST_LIMIT)
        .build()
        .map_err(|e| ToolError::invalid(format!("invalid pattern: {e}")))?;
    let index = match &args.group {
        None => 0,
        Some(Group::Index(i)) if *i < regex.captures_len() => *i,
        Some(Group::Index(i)) => {
            return Err(ToolError::invalid(format!(
                "group {i} does not exist: the pattern has {} group(s)",
                regex.captures_len() - 1
            )));
        }
        Some(Group::Name(name)) => regex
            .capture_names()
            .position(|n| n == Some(name.as_str()))
            .ok_or_else(|| ToolError::invalid(format!("no group named `{name}` in the pattern")))?,
    };
    let mut matches = Vec::new();
    let mut truncated = false;
    for (i, captures) in regex.captures_iter(&args.text).enumerate() {
        if i % 1024 == 1023 {
            ToolError::check_cancelled()?;
        }
        let Some(m) = captures.get(index) else {
            continue;
        };
        if matches.len() == max {
            truncated = true;
            break;
        }
        matches.push(Match { text: m.as_str().to_owned(), start: m.start(), end: m.end() });
    }
    Ok(Structured(Extracted { matches, truncated }))
}

// ---------------------------------------------------------------- json_query

/// Arguments of `json_query`; give exactly one of `pointer` and `path`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct JsonQueryArgs {
    /// The JSON document: a JSON value, or a string holding JSON text.
    document: Value,
    /// An RFC 6901 JSON Pointer, e.g. `/items/0/name`.
    #[serde(default)]
    pointer: Option<String>,
    /// An RFC 9535 JSONPath expression, e.g. `$.items[?@.price < 10].name`.
    #[serde(default)]
    path: Option<String>,
}

/// One node a query selected.
#[derive(Debug, PartialEq, Serialize, JsonSchema)]
struct Node {
    /// Where it is, as a JSON Pointer.
    pointer: String,
    /// The value there.
    value: Value,
}

/// Result of `json_query`.
#[derive(Debug, Serialize, JsonSchema)]
struct Queried {
    /// The selected nodes, in document order (a pointer selects at most one).
    nodes: Vec<Node>,
}

fn json_query(args: JsonQueryArgs) -> Result<Structured<Queried>, ToolError> {
    let document = match args.document {
        Value::String(text) => {
            check_len("document", &text)?;
            serde_json::from_str(&text)
                .map_err(|e| ToolError::invalid(format!("`document` is a string but not JSON text: {e}")))?
        }
        value => value,
    };
    let nodes = match (args.pointer, args.path) {
        (Some(pointer), None) => {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(ToolError::invalid(format!(
                    "`pointer` must be empty or start with `/`, got `{pointer}` (use `path` for JSONPath)"
                )));
            }
            document
                .pointer(&pointer)
                .map(|value| Node { pointer: pointer.clone(), value: value.clone() })
                .into_iter()
                .collect()
        }
        (None, Some(path)) => {
            let path = serde_json_path::JsonPath::parse(&path)
                .map_err(|e| ToolError::invalid(format!("invalid JSONPath: {e}")))?;
            path.query_located(&document)
                .iter()
                .map(|node| Node { pointer: node.location().to_json_pointer(), value: node.node().clone() })
                .collect()
        }
        _ => {
            return Err(ToolError::invalid("give exactly one of `pointer` and `path`"));
        }
    };
    Ok(Structured(Queried { nodes }))
}

// ---------------------------------------------------------------- diff

/// Arguments of `diff`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DiffArgs {
    /// The original text.
    old: String,
    /// The changed text.
    new: String,
    /// Unchanged lines shown around each change (default 3).
    #[serde(default)]
    context: Option<usize>,
    /// Label of the original in the header (default `old`).
    #[serde(default)]
    old_name: Option<String>,
    /// Label of the changed text in the header (default `new`).
    #[serde(default)]
    new_name: Option<String>,
}

fn diff(args: DiffArgs) -> Result<ToolOutput, ToolError> {
    check_len("old", &args.old)?;
    check_len("new", &args.new)?;
    let context = args.context.unwrap_or(3);
    if context > MAX_CONTEXT {
        return Err(ToolError::invalid(format!("context must be at most {MAX_CONTEXT}")));
    }
    let diff = similar::TextDiff::configure().timeout(DIFF_TIMEOUT).diff_lines(&args.old, &args.new);
    let (mut insertions, mut deletions) = (0usize, 0usize);
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => insertions += 1,
            similar::ChangeTag::Delete => deletions += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    let unified = diff
        .unified_diff()
        .context_radius(context)
        .header(args.old_name.as_deref().unwrap_or("old"), args.new_name.as_deref().unwrap_or("new"))
        .to_string();
    Ok(ToolOutput {
        content: vec![maestro_sdk::Content::text(if unified.is_empty() {
            "(no differences)".to_owned()
        } else {
            unified.clone()
        })],
        structured: Some(json!({
            "diff": unified,
            "identical": insertions == 0 && deletions == 0,
            "insertions": insertions,
            "deletions": deletions,
        })),
    })
}

export_plugin! {
    tools: [
        tool("count", "Counts the words, characters, lines and bytes of a text", count)
            .title("Count")
            .read_only()
            .idempotent(),
        tool(
            "regex_extract",
            "Finds the matches of a regular expression in a text (optionally one capture group)",
            regex_extract,
        )
        .title("Regex extract")
        .read_only()
        .idempotent(),
        tool(
            "json_query",
            "Selects values from a JSON document with a JSON Pointer or a JSONPath expression",
            json_query,
        )
        .title("JSON query")
        .read_only()
        .idempotent(),
        tool("diff", "Unified diff of two texts, line by line", diff)
            .title("Diff")
            .read_only()
            .idempotent(),
    ],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: Value) -> Result<ToolOutput, ToolError> {
        maestro_plugin().call(name, &args.to_string())
    }

    fn structured(name: &str, args: Value) -> Value {
        call(name, args).unwrap_or_else(|e| panic!("{name}: {e}")).structured.expect("structured output")
    }

    #[test]
    fn counts_words_chars_lines_bytes() {
        let out = structured("count", json!({"text": "héllo  wörld\nsecond line\n"}));
        assert_eq!(out, json!({"words": 4, "chars": 25, "lines": 2, "bytes": 27}));
        let out = structured("count", json!({"text": ""}));
        assert_eq!(out, json!({"words": 0, "chars": 0, "lines": 0, "bytes": 0}));
    }

    #[test]
    fn extracts_matches_groups_and_respects_the_limit() {
        let text = "a=1, b=22, c=333";
        let out = structured("regex_extract", json!({"pattern": r"(\w)=(?P<n>\d+)", "text": text}));
        assert_eq!(out["matches"].as_array().expect("array").len(), 3);
        assert_eq!(out["matches"][1], json!({"text": "b=22", "start": 5, "end": 9}));
        let out = structured(
            "regex_extract",
            json!({"pattern": r"(\w)=(?P<n>\d+)", "text": text, "group": "n", "max_matches": 2}),
        );
        assert_eq!(out["matches"][1]["text"], "22");
        assert_eq!(out["truncated"], true);
        let out = structured("regex_extract", json!({"pattern": r"(\w)=", "text": text, "group": 1}));
        assert_eq!(out["matches"][2]["text"], "c");
        let out = structured("regex_extract", json!({"pattern": "A", "text": "aA", "case_insensitive": true}));
        assert_eq!(out["matches"].as_array().expect("array").len(), 2);
    }

    #[test]
    fn rejects_bad_patterns_groups_and_huge_regexes() {
        let bad = call("regex_extract", json!({"pattern": "(", "text": "x"}));
        assert!(matches!(bad, Err(ToolError::InvalidArguments(m)) if m.starts_with("invalid pattern")));
        let bad = call("regex_extract", json!({"pattern": "x", "text": "x", "group": 3}));
        assert!(matches!(bad, Err(ToolError::InvalidArguments(m)) if m.contains("group 3 does not exist")));
        let bad = call("regex_extract", json!({"pattern": "x", "text": "x", "group": "nope"}));
        assert!(matches!(bad, Err(ToolError::InvalidArguments(_))));
        let explosive = call("regex_extract", json!({"pattern": r"\w{1000}{1000}", "text": "x"}));
        assert!(matches!(explosive, Err(ToolError::InvalidArguments(m)) if m.contains("size limit")));
        let long = call("regex_extract", json!({"pattern": "a".repeat(MAX_PATTERN + 1), "text": "x"}));
        assert!(matches!(long, Err(ToolError::InvalidArguments(_))));
    }

    #[test]
    fn queries_json_by_pointer_and_by_path() {
        let doc = json!({"items": [{"name": "a", "price": 5}, {"name": "b", "price": 15}]});
        let out = structured("json_query", json!({"document": doc, "pointer": "/items/1/name"}));
        assert_eq!(out, json!({"nodes": [{"pointer": "/items/1/name", "value": "b"}]}));
        let out = structured("json_query", json!({"document": doc, "pointer": "/missing"}));
        assert_eq!(out, json!({"nodes": []}));
        let out = structured("json_query", json!({"document": doc.to_string(), "path": "$.items[?@.price < 10].name"}));
        assert_eq!(out, json!({"nodes": [{"pointer": "/items/0/name", "value": "a"}]}));
        let out = structured("json_query", json!({"document": doc, "path": "$..price"}));
        assert_eq!(out["nodes"].as_array().expect("array").len(), 2);
        let out = structured("json_query", json!({"document": doc, "path": "$[?length(@) == 2]"}));
        assert_eq!(out["nodes"].as_array().expect("array").len(), 1);
    }

    #[test]
    fn json_query_needs_exactly_one_selector_and_valid_input() {
        let both = call("json_query", json!({"document": {}, "pointer": "", "path": "$"}));
        assert!(matches!(both, Err(ToolError::InvalidArguments(m)) if m.contains("exactly one")));
        let neither = call("json_query", json!({"document": {}}));
        assert!(matches!(neither, Err(ToolError::InvalidArguments(_))));
        let bad_path = call("json_query", json!({"document": {}, "path": "$[?"}));
        assert!(matches!(bad_path, Err(ToolError::InvalidArguments(m)) if m.starts_with("invalid JSONPath")));
        let bad_doc = call("json_query", json!({"document": "{nope", "pointer": ""}));
        assert!(matches!(bad_doc, Err(ToolError::InvalidArguments(_))));
    }

    #[test]
    fn diffs_with_context() {
        let old = "one\ntwo\nthree\nfour\nfive\nsix\n";
        let new = "one\ntwo\nTHREE\nfour\nfive\nsix\n";
        let out = call("diff", json!({"old": old, "new": new, "context": 1})).expect("diff");
        let text = out.text_content();
        assert!(text.starts_with("--- old\n+++ new\n@@ -2,3 +2,3 @@\n two\n-three\n+THREE\n four\n"), "{text}");
        let s = out.structured.expect("structured");
        assert_eq!((s["insertions"].as_u64(), s["deletions"].as_u64()), (Some(1), Some(1)));
        let same = call("diff", json!({"old": old, "new": old})).expect("diff");
        assert_eq!(same.text_content(), "(no differences)");
        assert_eq!(same.structured.expect("structured")["identical"], true);
    }
}
