//! A small, forgiving HTML to text/markdown converter.
//!
//! Not a conforming HTML parser: a tokenizer that never fails, plus a writer that keeps
//! what a reader needs (title, headings, paragraphs, lists, links, emphasis, code,
//! preformatted blocks, images' alt text) and drops what they do not (scripts, styles,
//! the document head, forms' hidden machinery).

/// Output flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Plain readable text.
    Text,
    /// Markdown.
    Markdown,
}

/// A converted page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    /// The `<title>`, if any.
    pub(crate) title: Option<String>,
    /// The readable content.
    pub(crate) content: String,
}

/// Elements whose content is dropped entirely.
const DROPPED: &[&str] =
    &["script", "style", "noscript", "template", "svg", "math", "iframe", "object", "canvas", "select"];
/// Elements that end a paragraph.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "nav",
    "aside",
    "blockquote",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "form",
    "figure",
    "figcaption",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "address",
    "details",
    "summary",
    "fieldset",
    "caption",
    "body",
    "html",
];
/// Elements with no content.
const VOID: &[&str] =
    &["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"];

/// Converts an HTML document. `base` is the page's URL, for resolving relative links.
pub(crate) fn convert(html: &str, flavor: Flavor, base: &str) -> Page {
    let mut w = Writer::new(flavor, base);
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            w.text(&decode_entities(rest));
            break;
        };
        if lt > 0 {
            w.text(&decode_entities(&rest[..lt]));
            rest = &rest[lt..];
        }
        // `rest` starts with '<'.
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            rest = rest.find('>').map_or("", |end| &rest[end + 1..]);
            continue;
        }
        let closing = rest.starts_with("</");
        let name_start = if closing { 2 } else { 1 };
        let name_len = rest[name_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == ':'))
            .unwrap_or(rest.len() - name_start);
        if name_len == 0 || !rest.as_bytes()[name_start].is_ascii_alphabetic() {
            // A lone '<' in text.
            w.text("<");
            rest = &rest[1..];
            continue;
        }
        let name = rest[name_start..name_start + name_len].to_ascii_lowercase();
        let Some(tag_end) = find_tag_end(&rest[name_start + name_len..]) else {
            break; // an unterminated tag ends the document
        };
        let attrs = &rest[name_start + name_len..name_start + name_len + tag_end];
        rest = &rest[name_start + name_len + tag_end + 1..];
        if closing {
            w.end(&name);
            continue;
        }
        let self_closing = attrs.trim_end().ends_with('/');
        if name == "title" || DROPPED.contains(&name.as_str()) || name == "textarea" {
            // Raw text (or dropped) element: skip to its end tag.
            let (inner, after) = split_at_end_tag(rest, &name);
            if name == "title" && w.title.is_none() {
                let title = collapse(&decode_entities(inner));
                if !title.is_empty() {
                    w.title = Some(title);
                }
            }
            rest = after;
            continue;
        }
        w.start(&name, attrs);
        if self_closing && !VOID.contains(&name.as_str()) {
            w.end(&name);
        }
    }
    let title = w.title.take();
    Page { title, content: w.finish() }
}

/// The index of the `>` ending a tag, skipping quoted attribute values.
fn find_tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits at `</name` (case-insensitive): the inner text and what follows the end tag.
fn split_at_end_tag<'a>(s: &'a str, name: &str) -> (&'a str, &'a str) {
    let lower = s.to_ascii_lowercase();
    let needle = format!("</{name}");
    match lower.find(&needle) {
        Some(i) => {
            let after = &s[i..];
            let end = after.find('>').map_or(after.len(), |e| e + 1);
            (&s[..i], &after[end..])
        }
        None => (s, ""),
    }
}

/// The value of an attribute in a tag's attribute text.
fn attribute(attrs: &str, wanted: &str) -> Option<String> {
    let bytes = attrs.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' && bytes[i] != b'/' {
            i += 1;
        }
        let name = &attrs[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                let q = bytes[i];
                let vstart = i + 1;
                i = vstart;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
                value = Some(&attrs[vstart..i]);
                i += 1;
            } else {
                let vstart = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = Some(&attrs[vstart..i]);
            }
        }
        if name.eq_ignore_ascii_case(wanted) {
            return value.map(decode_entities);
        }
        if name.is_empty() && value.is_none() {
            i += 1;
        }
    }
    None
}

/// Decodes character references (numeric and the common named ones).
pub(crate) fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..].find(';').map(|e| e + 1).filter(|e| *e <= 12);
        let decoded = end.and_then(|end| {
            let entity = &rest[1..end];
            let c = if let Some(num) = entity.strip_prefix('#') {
                let code = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse().ok(),
                };
                code.and_then(char::from_u32)
            } else {
                named_entity(entity)
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn named_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "bull" => '•',
        "middot" => '·',
        "deg" => '°',
        "times" => '×',
        "euro" => '€',
        "pound" => '£',
        _ => return None,
    })
}

/// Collapses runs of whitespace to single spaces and trims.
fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Resolves a link against the page URL (enough for readable output, not RFC 3986).
fn resolve(base: &str, href: &str) -> String {
    if href.contains("://") || href.starts_with("mailto:") {
        return href.to_owned();
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return href.to_owned();
    };
    if let Some(host_relative) = href.strip_prefix("//") {
        return format!("{scheme}://{host_relative}");
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    if href.starts_with('/') {
        return format!("{origin}{href}");
    }
    let path = &rest[authority_end..];
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    if href.starts_with('?') {
        return format!("{origin}{path}{href}");
    }
    format!("{origin}{dir}{href}")
}

struct Writer<'a> {
    flavor: Flavor,
    base: &'a str,
    title: Option<String>,
    out: String,
    /// Newlines owed before the next text (1: line break, 2: paragraph).
    newlines: usize,
    /// A space owed before the next text.
    space: bool,
    /// Written after the owed newlines (list markers).
    prefix: String,
    /// Open lists: `None` for bullets, `Some(n)` for the next number.
    lists: Vec<Option<u32>>,
    /// Open links: where the link text starts and the resolved target.
    links: Vec<Option<(usize, String)>>,
    pre: usize,
    cells: usize,
}

impl<'a> Writer<'a> {
    fn new(flavor: Flavor, base: &'a str) -> Self {
        Self {
            flavor,
            base,
            title: None,
            out: String::new(),
            newlines: 0,
            space: false,
            prefix: String::new(),
            lists: Vec::new(),
            links: Vec::new(),
            pre: 0,
            cells: 0,
        }
    }

    fn md(&self) -> bool {
        self.flavor == Flavor::Markdown
    }

    fn block(&mut self, newlines: usize) {
        self.newlines = self.newlines.max(newlines);
    }

    /// Pays owed newlines, prefix or space before visible output.
    fn flush(&mut self) {
        if self.newlines > 0 {
            if !self.out.is_empty() {
                while self.out.ends_with(' ') {
                    self.out.pop();
                }
                let have = self.out.len() - self.out.trim_end_matches('\n').len();
                for _ in have..self.newlines {
                    self.out.push('\n');
                }
            }
            self.newlines = 0;
            self.space = false;
            let prefix = std::mem::take(&mut self.prefix);
            self.out.push_str(&prefix);
        } else if self.space {
            if !self.out.is_empty() && !self.out.ends_with([' ', '\n']) {
                self.out.push(' ');
            }
            self.space = false;
        }
    }

    fn markup(&mut self, s: &str) {
        self.flush();
        self.out.push_str(s);
    }

    fn text(&mut self, s: &str) {
        if self.pre > 0 {
            self.flush();
            self.out.push_str(s);
            return;
        }
        for word in s.split_inclusive(char::is_whitespace) {
            let trimmed = word.trim_end_matches(char::is_whitespace);
            if !trimmed.is_empty() {
                self.flush();
                self.out.push_str(trimmed);
            }
            if trimmed.len() < word.len() {
                self.space = true;
            }
        }
    }

    fn heading_level(name: &str) -> Option<usize> {
        match name.as_bytes() {
            [b'h', d @ b'1'..=b'6'] => Some(usize::from(d - b'0')),
            _ => None,
        }
    }

    fn start(&mut self, name: &str, attrs: &str) {
        if let Some(level) = Self::heading_level(name) {
            self.block(2);
            if self.md() {
                self.markup(&format!("{} ", "#".repeat(level)));
            }
            return;
        }
        match name {
            "br" => {
                self.flush();
                self.out.push('\n');
            }
            "hr" => {
                self.block(2);
                if self.md() {
                    self.markup("---");
                }
                self.block(2);
            }
            "ul" | "ol" => {
                self.block(if self.lists.is_empty() { 2 } else { 1 });
                self.lists.push((name == "ol").then_some(1));
            }
            "li" => {
                self.block(1);
                let depth = self.lists.len().saturating_sub(1);
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let m = format!("{n}. ");
                        *n += 1;
                        m
                    }
                    _ => "- ".to_owned(),
                };
                self.prefix = format!("{}{marker}", "  ".repeat(depth));
            }
            "pre" => {
                self.block(2);
                if self.md() {
                    self.markup("```\n");
                }
                self.pre += 1;
            }
            "tr" => {
                self.block(1);
                self.cells = 0;
            }
            "td" | "th" => {
                if self.cells > 0 {
                    self.markup(" | ");
                }
                self.cells += 1;
            }
            "a" => {
                let href = attribute(attrs, "href")
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty() && !h.starts_with('#') && !h.starts_with("javascript:"));
                if self.md()
                    && let Some(href) = href
                {
                    self.markup("[");
                    self.links.push(Some((self.out.len(), resolve(self.base, &href))));
                } else {
                    self.links.push(None);
                }
            }
            "img" => {
                let alt = attribute(attrs, "alt").map(|a| collapse(&a)).unwrap_or_default();
                if alt.is_empty() {
                    return;
                }
                match (self.md(), attribute(attrs, "src")) {
                    (true, Some(src)) => {
                        let img = format!("![{alt}]({})", resolve(self.base, src.trim()));
                        self.markup(&img);
                    }
                    _ => self.text(&alt),
                }
            }
            "strong" | "b" if self.md() && self.pre == 0 => self.markup("**"),
            "em" | "i" if self.md() && self.pre == 0 => self.markup("*"),
            "code" if self.md() && self.pre == 0 => self.markup("`"),
            n if BLOCKS.contains(&n) => self.block(2),
            _ => {}
        }
    }

    fn end(&mut self, name: &str) {
        if Self::heading_level(name).is_some() {
            self.block(2);
            return;
        }
        match name {
            "ul" | "ol" => {
                self.lists.pop();
                self.block(if self.lists.is_empty() { 2 } else { 1 });
            }
            "li" => self.block(1),
            "pre" => {
                self.pre = self.pre.saturating_sub(1);
                if self.md() {
                    if !self.out.ends_with('\n') {
                        self.out.push('\n');
                    }
                    self.out.push_str("```");
                }
                self.block(2);
            }
            "tr" => self.block(1),
            "a" => {
                if let Some(Some((start, href))) = self.links.pop() {
                    if self.out.len() == start {
                        self.out.pop(); // an empty link: drop the `[`
                    } else {
                        self.out.push_str(&format!("]({href})"));
                    }
                }
            }
            "strong" | "b" if self.md() && self.pre == 0 => self.out.push_str("**"),
            "em" | "i" if self.md() && self.pre == 0 => self.out.push('*'),
            "code" if self.md() && self.pre == 0 => self.out.push('`'),
            n if BLOCKS.contains(&n) => self.block(2),
            _ => {}
        }
    }

    fn finish(self) -> String {
        let mut out = String::with_capacity(self.out.len());
        let mut blank = 0;
        for line in self.out.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                blank += 1;
                continue;
            }
            if !out.is_empty() {
                out.push_str(if blank > 0 { "\n\n" } else { "\n" });
            }
            blank = 0;
            out.push_str(line);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r##"<!DOCTYPE html>
<html><head><title>  The &amp; Page </title>
<style>body { color: red }</style><script>alert("<p>no</p>")</script></head>
<body>
<!-- a comment <p>hidden</p> -->
<h1>Main   heading</h1>
<p>Some <b>bold</b> and <em>emphasised</em> text with a <a href="/docs?x=1">link</a>
and <a href="https://other.test/a">another</a>.</p>
<ul><li>one</li><li>two <ul><li>nested</li></ul></li></ul>
<ol><li>first<li>second</ol>
<pre>  keep
    this</pre>
<p>5 &lt; 6 &#x26; 7 &gt; 2&nbsp;&mdash; <code>x()</code><br>next line</p>
<img src="pic.png" alt="A picture"><a href="#top"></a>
<noscript>enable js</noscript>
</body></html>"##;

    #[test]
    fn converts_to_markdown() {
        let page = convert(PAGE, Flavor::Markdown, "https://example.com/dir/page.html");
        assert_eq!(page.title.as_deref(), Some("The & Page"));
        let expected = "# Main heading\n\n\
            Some **bold** and *emphasised* text with a [link](https://example.com/docs?x=1) \
            and [another](https://other.test/a).\n\n\
            - one\n- two\n  - nested\n\n\
            1. first\n2. second\n\n\
            ```\n  keep\n    this\n```\n\n\
            5 < 6 & 7 > 2 — `x()`\nnext line\n\n\
            ![A picture](https://example.com/dir/pic.png)";
        assert_eq!(page.content, expected);
    }

    #[test]
    fn converts_to_plain_text() {
        let page = convert(PAGE, Flavor::Text, "https://example.com/");
        assert!(page.content.starts_with("Main heading\n\nSome bold and emphasised text with a link and another."));
        assert!(page.content.contains("- one\n- two\n  - nested"));
        assert!(!page.content.contains("alert"));
        assert!(!page.content.contains("color"));
        assert!(!page.content.contains("hidden"));
        assert!(!page.content.contains("enable js"));
        assert!(page.content.ends_with("A picture"));
    }

    #[test]
    fn survives_broken_markup() {
        for html in ["<", "<p", "a < b", "<p>unclosed <b>bold", "<a href='x", "&#xZZ; &bogus; &", "<><//>"] {
            let _ = convert(html, Flavor::Markdown, "http://x/");
        }
        assert_eq!(convert("a < b", Flavor::Text, "http://x/").content, "a < b");
        assert_eq!(convert("&#xZZ; &bogus; &", Flavor::Text, "http://x/").content, "&#xZZ; &bogus; &");
    }

    #[test]
    fn reads_attributes() {
        assert_eq!(attribute(r#" class="a" href='b c' x"#, "href").as_deref(), Some("b c"));
        assert_eq!(attribute(" href=plain>", "HREF").as_deref(), Some("plain>"));
        assert_eq!(attribute(" disabled", "href"), None);
    }

    #[test]
    fn resolves_links() {
        let base = "https://h.test/a/b?q#f";
        assert_eq!(resolve(base, "c"), "https://h.test/a/c");
        assert_eq!(resolve(base, "/c"), "https://h.test/c");
        assert_eq!(resolve(base, "//o.test/x"), "https://o.test/x");
        assert_eq!(resolve(base, "?z"), "https://h.test/a/b?z");
        assert_eq!(resolve("https://h.test", "c"), "https://h.test/c");
    }
}
