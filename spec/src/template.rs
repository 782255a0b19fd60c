//! Index templates: a path or URL with the slice index in it, as `{index}`, `{index:05}`, `%d` or `%05d`.

use crate::error::ConfigError;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text copied as is.
    Literal(String),
    /// The index, zero-padded to at least this many digits (0 or 1: no padding).
    Index { width: usize },
}

/// A parsed index template.
///
/// Placeholders: `{index}` and `{index:0N}` (zero-padded to `N` digits, e.g. `{index:05}` -> `00042`), and, in
/// file patterns only, the printf forms `%d` and `%0Nd` (`%%` is a literal `%` there). In URL templates every
/// `%` is literal, since `%da` or `%05d` can be a percent escape. A template may repeat the placeholder; it must
/// have at least one.
///
/// These are the only template rules: validation and the sources both call [`IndexTemplate::parse`] /
/// [`IndexTemplate::parse_url`], so `validate` refuses exactly what a run would, with the same message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexTemplate {
    text: String,
    parts: Vec<Part>,
}

impl IndexTemplate {
    /// Parses `template`; `field` is the spec field it came from, for messages.
    ///
    /// # Errors
    /// [`ConfigError`] naming `field` when the template has no index placeholder or a malformed
    /// `{index...}` one.
    pub fn parse(template: &str, field: &str) -> Result<IndexTemplate, ConfigError> {
        Self::parse_with(template, field, true)
    }

    /// Parses an HTTP(S) URL template: `{index}` placeholders only, and the URL of the first index must be a
    /// valid `http://` or `https://` URL.
    ///
    /// # Errors
    /// [`ConfigError`] naming `field` as for [`IndexTemplate::parse`], or when the template is not an
    /// http(s) URL.
    pub fn parse_url(
        template: &str,
        field: &str,
        first: u64,
    ) -> Result<IndexTemplate, ConfigError> {
        let config = |message: String| ConfigError::new(field, message);
        if !(template.starts_with("http://") || template.starts_with("https://")) {
            return Err(config(format!(
                "expected an http:// or https:// URL, found {template:?}"
            )));
        }
        let parsed = Self::parse_with(template, field, false)?;
        let example = parsed.render(first);
        url::Url::parse(&example)
            .map_err(|e| config(format!("{example} is not a valid URL: {e}")))?;
        Ok(parsed)
    }

    fn parse_with(template: &str, field: &str, printf: bool) -> Result<IndexTemplate, ConfigError> {
        let config = |message: String| ConfigError::new(field, message);
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(pos) = rest.find(['{', '%']) {
            literal.push_str(&rest[..pos]);
            let tail = &rest[pos..];
            let (placeholder, consumed) = if let Some(after) = tail.strip_prefix("{index") {
                let close = after
                    .find('}')
                    .ok_or_else(|| config(format!("unclosed placeholder in {template:?}")))?;
                let width = match &after[..close] {
                    "" => 0,
                    spec => parse_width(spec.strip_prefix(':').unwrap_or(spec)).ok_or_else(|| {
                        config(format!(
                            "bad placeholder {{index{spec}}} in {template:?}: use {{index}} or a zero-padded width \
                             such as {{index:05}}"
                        ))
                    })?,
                };
                (Some(width), "{index".len() + close + 1)
            } else if printf && tail.starts_with("%%") {
                literal.push('%');
                (None, 2)
            } else if printf && tail.starts_with("%d") {
                (Some(0), 2)
            } else if let Some((width, len)) = printf_width(tail).filter(|_| printf) {
                (Some(width), len)
            } else {
                literal.push_str(&tail[..1]);
                (None, 1)
            };
            if let Some(width) = placeholder {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Index { width });
            }
            rest = &tail[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Index { .. })) {
            let forms = if printf {
                "{index}, {index:05}, %d or %05d"
            } else {
                "{index} or {index:05}"
            };
            return Err(config(format!(
                "template {template:?} has no index placeholder: put {forms} where the slice index goes"
            )));
        }
        Ok(IndexTemplate {
            text: template.to_owned(),
            parts,
        })
    }

    /// The path or URL of `index`.
    pub fn render(&self, index: u64) -> String {
        let mut out = String::with_capacity(self.text.len() + 8);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Index { width } => out.push_str(&format!("{index:0width$}")),
            }
        }
        out
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for IndexTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Width of a `0N` format spec (a zero then digits).
fn parse_width(spec: &str) -> Option<usize> {
    let digits = spec.strip_prefix('0')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|w| *w <= 32)
}

/// Width and length of a `%0Nd` placeholder at the start of `s`.
fn printf_width(s: &str) -> Option<(usize, usize)> {
    let body = s.strip_prefix('%')?;
    let end = body.find('d')?;
    let width = parse_width(&body[..end])?;
    Some((width, end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, i: u64) -> String {
        IndexTemplate::parse(t, "f")
            .map(|t| t.render(i))
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn placeholders() {
        assert_eq!(render("a/{index}.png", 7), "a/7.png");
        assert_eq!(render("a/{index:05}.png", 7), "a/00007.png");
        assert_eq!(render("a/{index:03}.png", 12345), "a/12345.png");
        assert_eq!(render("s_%d.tif", 42), "s_42.tif");
        assert_eq!(render("s_%05d.tif", 42), "s_00042.tif");
        assert_eq!(
            render("http://h/a%20b/{index}?x=%d", 3),
            "http://h/a%20b/3?x=3"
        );
        assert_eq!(render("100%%_%d", 1), "100%_1");
        assert_eq!(render("{x}/{index}", 1), "{x}/1");
    }

    #[test]
    fn url_templates_take_braces_only() {
        let url = |t: &str| {
            IndexTemplate::parse_url(t, "spec.source.http.urlTemplate", 3)
                .map(|t| t.render(3))
                .unwrap_or_else(|e| e.to_string())
        };
        assert_eq!(
            url("http://h/a%20b/{index:03}.png"),
            "http://h/a%20b/003.png"
        );
        assert_eq!(url("https://h/%da/{index}"), "https://h/%da/3");
        assert_eq!(
            url("http://h/s%05d.png"),
            "spec.source.http.urlTemplate: template \"http://h/s%05d.png\" has no index placeholder: put \
             {index} or {index:05} where the slice index goes"
        );
        assert_eq!(
            url("ftp://h/{index}"),
            "spec.source.http.urlTemplate: expected an http:// or https:// URL, found \"ftp://h/{index}\""
        );
        assert_eq!(
            url("http://h/{index:5}"),
            "spec.source.http.urlTemplate: bad placeholder {index:5} in \"http://h/{index:5}\": use {index} or \
             a zero-padded width such as {index:05}"
        );
        assert!(url("http://[::1/{index}").contains("is not a valid URL"));
    }

    #[test]
    fn errors_name_the_field() {
        for bad in [
            "a.png",
            "a/{index:5}.png",
            "a/{index:x}",
            "a/{index",
            "100%",
        ] {
            let e = IndexTemplate::parse(bad, "spec.source.files.pattern")
                .expect_err(bad)
                .to_string();
            assert!(e.starts_with("spec.source.files.pattern: "), "{e}");
        }
    }
}
