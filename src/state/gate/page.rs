//! The HTML page of the gate's 503, for browsers: the configured
//! `maintenance.html_page` with its placeholders filled in, or a plain
//! built-in page. Built once per change of the gate, and once a second
//! while a configured page counts down to the gate's end ([`Countdown`]).
//!
//! Placeholders, each replaced by its value HTML-escaped (spaces inside
//! the braces allowed, any other `{{...}}` left as it is):
//!
//! | placeholder | value |
//! |---|---|
//! | `{{message}}` | the operator's message |
//! | `{{retry_after}}` | the `Retry-After` as a duration (`5m`) |
//! | `{{retry_after_s}}` | the same in seconds |
//! | `{{until}}` | when the gate turns itself off (RFC 3339), or empty |
//! | `{{window}}` | the running window, `STARTS to ENDS` (RFC 3339), or empty |

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;

use super::super::persist::rfc3339;

/// What a page may show.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub message: &'a str,
    pub retry_after: Duration,
    pub until: Option<SystemTime>,
    /// The running window's start and end.
    pub window: Option<(SystemTime, SystemTime)>,
}

impl Values<'_> {
    /// The value of placeholder `name`, unescaped; `None` for a name that
    /// is not a placeholder.
    fn of(&self, name: &str) -> Option<String> {
        Some(match name {
            "message" => self.message.to_owned(),
            "retry_after" => humantime::format_duration(self.retry_after).to_string(),
            "retry_after_s" => self.retry_after.as_secs().to_string(),
            "until" => self.until.map(rfc3339).unwrap_or_default(),
            "window" => self
                .window
                .map(|(from, to)| format!("{} to {}", rfc3339(from), rfc3339(to)))
                .unwrap_or_default(),
            _ => return None,
        })
    }
}

/// `template` with every placeholder replaced by its escaped value.
pub fn render(template: &str, values: &Values<'_>) -> String {
    let mut out = String::with_capacity(template.len() + values.message.len());
    for piece in pieces(template) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Braced { name, whole } => match values.of(name) {
                Some(value) => escape_into(&value, &mut out),
                None => out.push_str(whole),
            },
        }
    }
    out
}

/// A configured page that shows the time left (`{{retry_after}}`,
/// `{{retry_after_s}}`) while the gate has an end: rendered again for each
/// new second left, by the first request that finds it stale, so that it
/// says what the `Retry-After` beside it says. (The built-in page shows the
/// end itself, which needs no counting.)
#[derive(Debug)]
pub struct Countdown {
    template: String,
    message: String,
    until: SystemTime,
    window: Option<(SystemTime, SystemTime)>,
    /// The whole seconds left it was last rendered for, and that page.
    last: ArcSwap<(u64, Bytes)>,
}

impl Countdown {
    /// `None` unless `template` shows the time left and `values` has an
    /// end. `first` is the page as rendered from `values`.
    pub fn of(template: &str, values: &Values<'_>, first: &Bytes) -> Option<Countdown> {
        let until = values.until?;
        let counts = pieces(template).any(
            |piece| matches!(piece, Piece::Braced { name, .. } if name.starts_with("retry_after")),
        );
        counts.then(|| Countdown {
            template: template.to_owned(),
            message: values.message.to_owned(),
            until,
            window: values.window,
            last: ArcSwap::from_pointee((values.retry_after.as_secs(), first.clone())),
        })
    }

    /// The page with `left` to go (whole seconds).
    pub fn page(&self, left: Duration) -> Bytes {
        let last = self.last.load();
        if last.0 == left.as_secs() {
            return last.1.clone();
        }
        let values = Values {
            message: &self.message,
            retry_after: left,
            until: Some(self.until),
            window: self.window,
        };
        let page = Bytes::from(render(&self.template, &values));
        self.last.store(Arc::new((left.as_secs(), page.clone())));
        page
    }
}

/// A stretch of a template: text, or `{{ name }}` (which may not be a
/// placeholder at all).
enum Piece<'a> {
    Text(&'a str),
    Braced { name: &'a str, whole: &'a str },
}

/// `template` in pieces, in order.
fn pieces(template: &str) -> impl Iterator<Item = Piece<'_>> {
    let mut rest = template;
    let mut braced_next = None;
    std::iter::from_fn(move || {
        if let Some(piece) = braced_next.take() {
            return Some(piece);
        }
        if rest.is_empty() {
            return None;
        }
        let braced = rest.find("{{").and_then(|open| {
            let close = rest[open + 2..].find("}}")?;
            Some((open, open + close + 4))
        });
        let Some((open, end)) = braced else {
            return Some(Piece::Text(std::mem::take(&mut rest)));
        };
        let whole = &rest[open..end];
        let text = &rest[..open];
        rest = &rest[end..];
        let piece = Piece::Braced {
            name: whole[2..whole.len() - 2].trim(),
            whole,
        };
        if text.is_empty() {
            Some(piece)
        } else {
            braced_next = Some(piece);
            Some(Piece::Text(text))
        }
    })
}

/// The page browsers get when no `maintenance.html_page` is configured:
/// the message, and when to come back, readable without style or script.
pub fn built_in(values: &Values<'_>) -> String {
    let mut page = String::with_capacity(1024);
    page.push_str(concat!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<title>Down for maintenance</title>\n",
        "<style>body{font:1.125rem/1.5 system-ui,sans-serif;max-width:36rem;margin:3rem auto;",
        "padding:0 1rem;color:#1a1a1a;background:#fff}",
        "@media (prefers-color-scheme:dark){body{color:#eee;background:#121212}}",
        "h1{font-size:1.6rem}</style>\n</head>\n<body>\n<main>\n",
        "<h1>Down for maintenance</h1>\n<p id=\"message\">"
    ));
    escape_into(values.message, &mut page);
    page.push_str("</p>\n");
    match values.until {
        Some(until) => {
            let at = rfc3339(until);
            page.push_str("<p>Expected back by <time datetime=\"");
            escape_into(&at, &mut page);
            page.push_str("\">");
            escape_into(&human_utc(&at), &mut page);
            page.push_str("</time>.</p>\n");
        }
        None => {
            page.push_str("<p>Please try again in ");
            escape_into(
                &humantime::format_duration(values.retry_after).to_string(),
                &mut page,
            );
            page.push_str(".</p>\n");
        }
    }
    page.push_str("</main>\n</body>\n</html>\n");
    page
}

/// `2026-12-01T10:30:00Z` as `2026-12-01 10:30 UTC`.
fn human_utc(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => rfc3339.to_owned(),
    }
}

/// Appends `text` with `&`, `<`, `>`, `"` and `'` as character references.
fn escape_into(text: &str, out: &mut String) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(message: &str) -> Values<'_> {
        Values {
            message,
            retry_after: Duration::from_secs(600),
            until: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_121_000)),
            window: None,
        }
    }

    #[test]
    fn placeholders_are_filled_in_escaped() {
        let page = render(
            "<p>{{message}}</p><p>{{ retry_after }} ({{retry_after_s}}s) until {{until}}{{window}}</p>{{unknown}} {{",
            &values("Back by 10:30 <script>alert(1)</script> & \"soon\""),
        );
        assert_eq!(
            page,
            "<p>Back by 10:30 &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;soon&quot;</p><p>10m (600s) until 2026-12-01T10:30:00Z</p>{{unknown}} {{"
        );
    }

    #[test]
    fn the_built_in_page_says_the_message_and_when() {
        let page = built_in(&values("Back by 10:30 <b>"));
        assert!(
            page.contains("<p id=\"message\">Back by 10:30 &lt;b&gt;</p>"),
            "{page}"
        );
        assert!(
            page.contains("<time datetime=\"2026-12-01T10:30:00Z\">2026-12-01 10:30 UTC</time>")
        );
        let page = built_in(&Values {
            until: None,
            ..values("x")
        });
        assert!(page.contains("try again in 10m."), "{page}");
    }

    #[test]
    fn a_page_that_shows_the_time_left_counts_down_to_the_end() {
        let first = Bytes::from_static(b"first");
        let counting = Countdown::of("{{retry_after_s}}s: {{message}}", &values("x"), &first);
        let counting = counting.expect("a page with the time left and an end counts down");
        assert_eq!(counting.page(Duration::from_secs(600)), first);
        assert_eq!(counting.page(Duration::from_secs(599)), "599s: x");
        assert!(Countdown::of("{{message}} {{until}}", &values("x"), &first).is_none());
        let no_end = Values {
            until: None,
            ..values("x")
        };
        assert!(Countdown::of("{{retry_after}}", &no_end, &first).is_none());
    }
}
