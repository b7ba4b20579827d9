//! Markdown → a complete standalone HTML page.
//!
//! pulldown-cmark writes the HTML from a filtered stream of events: raw HTML (blocks and
//! inline) becomes text, so the writer escapes it (a block shows as code); a link whose
//! target is not `http`, `https` or `mailto` loses its target and keeps its text; an
//! image becomes a link to it (nothing is loaded when the page is opened). The page also
//! carries a Content-Security-Policy that allows no script and no outside resource.

use pulldown_cmark::{CodeBlockKind, CowStr, Event, LinkType, Parser, Tag, TagEnd};

/// The stylesheet: readable on screen and on paper, no outside fonts.
const STYLE: &str = "\
body{margin:0;background:#fff;color:#1f2328;font:16px/1.6 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}\
main{max-width:46rem;margin:0 auto;padding:2rem 1.25rem}\
h1,h2,h3,h4{line-height:1.25;margin:1.6em 0 .6em}h1{font-size:2em;margin-top:0}\
a{color:#0969da}pre,code{font:.9em/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
pre{background:#f6f8fa;padding:1em;overflow:auto;border-radius:6px;white-space:pre-wrap}\
:not(pre)>code{background:#eff1f3;padding:.1em .3em;border-radius:4px}\
blockquote{margin:0;padding:0 1em;color:#59636e;border-left:.25em solid #d1d9e0}\
table{border-collapse:collapse;display:block;overflow:auto}th,td{border:1px solid #d1d9e0;padding:.4em .8em}\
th{background:#f6f8fa}img{max-width:100%}hr{border:0;border-top:1px solid #d1d9e0}\
@media print{main{max-width:none;padding:0}a{color:inherit}}";

/// What the page allows: inline styles, nothing else.
pub(crate) const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// The page for `markdown` (already under its title heading) titled `title`.
pub(super) fn page(title: &str, markdown: &str) -> String {
    let mut body = String::with_capacity(markdown.len() * 2);
    pulldown_cmark::html::push_html(&mut body, Safe::new(Parser::new_ext(markdown, super::parser_options())));
    let title_text = escape(title);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CONTENT_SECURITY_POLICY}\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"generator\" content=\"Maestro\">\n<title>{title_text}</title>\n<style>{STYLE}</style>\n\
         </head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n"
    )
}

/// HTML-escapes `text` (`&`, `<`, `>`, `"`, `'`).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The event filter.
struct Safe<I> {
    events: I,
    /// For each open link or image: whether its target was kept (else its end is
    /// dropped too).
    links: Vec<bool>,
}

impl<I> Safe<I> {
    fn new(events: I) -> Self {
        Self { events, links: Vec::new() }
    }
}

impl<'a, I: Iterator<Item = Event<'a>>> Iterator for Safe<I> {
    type Item = Event<'a>;

    fn next(&mut self) -> Option<Event<'a>> {
        loop {
            let event = self.events.next()?;
            return Some(match event {
                Event::Html(text) | Event::InlineHtml(text) => Event::Text(text),
                Event::Start(Tag::HtmlBlock) => {
                    Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(CowStr::Borrowed("html"))))
                }
                Event::End(TagEnd::HtmlBlock) => Event::End(TagEnd::CodeBlock),
                Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
                    let keep = super::allowed_link(&dest_url);
                    self.links.push(keep);
                    if !keep {
                        continue;
                    }
                    Event::Start(Tag::Link { link_type, dest_url, title, id })
                }
                Event::Start(Tag::Image { dest_url, title, id, .. }) => {
                    let keep = super::allowed_link(&dest_url);
                    self.links.push(keep);
                    if !keep {
                        continue;
                    }
                    Event::Start(Tag::Link { link_type: LinkType::Inline, dest_url, title, id })
                }
                Event::End(TagEnd::Link | TagEnd::Image) => {
                    if !self.links.pop().unwrap_or(false) {
                        continue;
                    }
                    Event::End(TagEnd::Link)
                }
                other => other,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(markdown: &str) -> String {
        let page = page("T", markdown);
        let start = page.find("<main>\n").expect("main") + 7;
        let end = page.find("</main>").expect("main end");
        page[start..end].to_owned()
    }

    #[test]
    fn raw_html_is_shown_as_text_never_passed_through() {
        let html =
            body("Hello <b onclick=\"x()\">bold</b>\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b "), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(html.contains("&lt;b onclick=\"x()\"&gt;bold&lt;/b&gt;"), "{html}");
    }

    #[test]
    fn javascript_and_data_links_lose_their_target_but_keep_their_text() {
        let html = body(
            "[a](javascript:alert(1)) [b](JAVASCRIPT:alert(1)) [c](data:text/html,x) [d](https://ok.example/) \
             <javascript:alert(2)> [e][r]\n\n[r]: vbscript:x",
        );
        // Their targets are gone (an autolink's stays as plain text, harmless).
        assert!(!html.to_ascii_lowercase().contains("href=\"javascript"), "{html}");
        assert_eq!(html.matches("<a ").count(), 1, "{html}");
        assert!(!html.contains("href=\"data:") && !html.contains("vbscript"), "{html}");
        assert!(html.contains("<a href=\"https://ok.example/\">d</a>"), "{html}");
        for text in ["a", "b", "c", "e"] {
            assert!(html.contains(&format!("{text} ")) || html.contains(&format!(" {text}")), "{text}: {html}");
        }
    }

    #[test]
    fn images_become_links_and_unsafe_images_plain_text() {
        let html = body("![logo](https://img.example/a.png) ![x](javascript:alert(1))");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("<a href=\"https://img.example/a.png\">logo</a>"), "{html}");
        assert!(!html.contains("javascript"), "{html}");
    }

    #[test]
    fn the_page_is_standalone_with_an_escaped_title_and_a_strict_policy() {
        let page = page("<script>alert('t')</script> & co", "# Heading\n\n| a | b |\n|---|---|\n| 1 | 2 |\n");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<title>&lt;script&gt;alert(&#39;t&#39;)&lt;/script&gt; &amp; co</title>"), "{page}");
        assert!(page.contains("Content-Security-Policy") && page.contains("default-src 'none'"));
        assert!(page.contains("<table>") && page.contains("<h1>Heading</h1>"), "{page}");
        assert!(page.ends_with("</html>\n"));
    }
}
