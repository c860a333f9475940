//! Alertmanager's label matchers: `name="value"`, `name!="value"`, `name=~"regex"`,
//! `name!~"regex"`, as silences and inhibition rules are written.
//!
//! The syntax is the one Alertmanager 0.25's `pkg/labels` parses and `amtool`
//! accepts, so a matcher copied from either means the same here: the value may be
//! quoted (escapes `\"`, `\\`, `\n`; any other backslash is literal) or bare
//! (`namespace=shop`); a regex is anchored at both ends, `^(?:value)$`; a label the
//! signal lacks has the empty value, so `severity!="info"` matches a signal without
//! a severity. A list may be wrapped in `{…}` and separated by commas.
//!
//! A leaf module: it imports nothing from the crate, so silences, inhibition and the
//! fuzz checks all share one parser. It must never panic on any input.

use std::fmt;
use std::str::FromStr;

use regex::Regex;

/// How a matcher compares a label's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// Why a matcher was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MatcherError {
    #[error("bad matcher format: {0:?} (want name=\"value\", name!=\"value\", name=~\"regex\" or name!~\"regex\")")]
    Format(String),
    #[error("matcher value contains an unescaped double quote: {0:?}")]
    UnescapedQuote(String),
    #[error("matcher {name:?} has an invalid regular expression: {reason}")]
    Regex { name: String, reason: String },
}

/// One parsed matcher. Two matchers are equal when name, operator and value are.
#[derive(Clone, Debug)]
pub struct Matcher {
    name: String,
    op: MatchOp,
    value: String,
    /// The anchored regex of `=~` and `!~`.
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        (self.name.as_str(), self.op, self.value.as_str()) == (other.name.as_str(), other.op, other.value.as_str())
    }
}

impl Eq for Matcher {}

/// Regexes are compiled with a size limit, so a hostile matcher costs a refusal, not
/// the gateway's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, MatcherError> {
        if !is_label_name(name) {
            return Err(MatcherError::Format(name.to_string()));
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| MatcherError::Regex { name: name.to_string(), reason: e.to_string() })?,
            ),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher { name: name.to_string(), op, value: value.to_string(), regex })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn op(&self) -> MatchOp {
        self.op
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether a label's value matches; `None`, a label the signal lacks, is the
    /// empty value, as in Alertmanager.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let value = value.unwrap_or("");
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(value),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(value),
            (MatchOp::Regex | MatchOp::NotRegex, None) => unreachable!("regex matchers are built with their regex"),
        }
    }

    /// The value this matcher requires exactly, if it is an equality: what an index
    /// of silences or rules is keyed by.
    pub fn equal_value(&self) -> Option<&str> {
        (self.op == MatchOp::Equal).then_some(self.value.as_str())
    }
}

impl FromStr for Matcher {
    type Err = MatcherError;

    /// Parses one matcher as Alertmanager's classic parser does: a label name,
    /// optional spaces, the operator, optional spaces, then the value up to trailing
    /// spaces, quoted or not.
    fn from_str(s: &str) -> Result<Matcher, MatcherError> {
        let format = || MatcherError::Format(s.to_string());
        let trimmed = s.trim_start();
        let name_len = trimmed
            .char_indices()
            .find(|&(i, c)| !(c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(trimmed.len(), |(i, _)| i);
        let (name, rest) = trimmed.split_at(name_len);
        if name.is_empty() {
            return Err(format());
        }
        let rest = rest.trim_start();
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Equal, r)
        } else {
            return Err(format());
        };
        let raw = rest.trim();
        let value = unescape(raw).ok_or_else(|| MatcherError::UnescapedQuote(raw.to_string()))?;
        Matcher::new(name, op, &value)
    }
}

/// The value of a matcher as written: without its quotes, with `\"`, `\\` and `\n`
/// unescaped and any other backslash kept. `None` when a double quote is unescaped
/// anywhere but as the closing quote of a quoted value, or a quoted value is not
/// closed.
fn unescape(raw: &str) -> Option<String> {
    let (body, quoted) = match raw.strip_prefix('"') {
        Some(body) => (body, true),
        None => (raw, false),
    };
    let mut out = String::with_capacity(body.len());
    let mut closed = false;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if closed {
            // Anything after the closing quote.
            return None;
        }
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some(e @ ('"' | '\\')) => out.push(e),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                // A backslash as the last character is literal.
                None => out.push('\\'),
            },
            '"' if quoted && chars.peek().is_none() => closed = true,
            '"' => return None,
            c => out.push(c),
        }
    }
    (closed == quoted).then_some(out)
}

/// Whether `s` is a Prometheus label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c == ':' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c == ':' || c.is_ascii_alphanumeric())
}

impl fmt::Display for Matcher {
    /// Written back in the quoted form, which parses to the same matcher.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"", self.name, self.op.as_str())?;
        for c in self.value.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Parses a list of matchers as `amtool` and Alertmanager's API accept it:
/// `{a="1", b=~"2"}` or `a="1",b=~"2"`; commas inside quotes are part of the value.
pub fn parse_list(s: &str) -> Result<Vec<Matcher>, MatcherError> {
    let s = s.trim();
    let s = s.strip_prefix('{').unwrap_or(s);
    let s = s.strip_suffix('}').unwrap_or(s);
    let mut tokens = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            ',' if !quoted => {
                tokens.push(&s[start..i]);
                start = i + 1;
                continue;
            }
            '"' if !escaped => quoted = !quoted,
            '\\' => {
                escaped = !escaped;
                continue;
            }
            _ => {}
        }
        escaped = false;
    }
    let last = s[start..].trim();
    if !last.is_empty() {
        tokens.push(last);
    }
    tokens.into_iter().map(str::parse).collect()
}

/// Whether every matcher matches the labels `get` looks up.
pub fn all_match<'a>(matchers: &[Matcher], get: impl Fn(&str) -> Option<&'a str>) -> bool {
    matchers.iter().all(|m| m.matches(get(m.name())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Matcher {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn parts(m: &Matcher) -> (&str, MatchOp, &str) {
        (m.name(), m.op(), m.value())
    }

    #[test]
    fn the_four_operators_parse_quoted_values() {
        assert_eq!(parts(&parse(r#"foo="bar""#)), ("foo", MatchOp::Equal, "bar"));
        assert_eq!(parts(&parse(r#"foo!="bar""#)), ("foo", MatchOp::NotEqual, "bar"));
        assert_eq!(parts(&parse(r#"foo=~"bar.*""#)), ("foo", MatchOp::Regex, "bar.*"));
        assert_eq!(parts(&parse(r#"foo!~"bar.*""#)), ("foo", MatchOp::NotRegex, "bar.*"));
    }

    #[test]
    fn bare_values_parse_as_amtool_accepts_them() {
        assert_eq!(parts(&parse("namespace=shop")), ("namespace", MatchOp::Equal, "shop"));
        assert_eq!(parts(&parse("pod=~web-.*")), ("pod", MatchOp::Regex, "web-.*"));
        assert_eq!(parts(&parse("foo=")), ("foo", MatchOp::Equal, ""));
        assert_eq!(parts(&parse(r#"foo="""#)), ("foo", MatchOp::Equal, ""));
    }

    #[test]
    fn spaces_around_the_operator_and_value_are_ignored() {
        assert_eq!(parts(&parse(r#"  foo  =~  "bar"  "#)), ("foo", MatchOp::Regex, "bar"));
        assert_eq!(parts(&parse("foo = bar baz ")), ("foo", MatchOp::Equal, "bar baz"));
        // Spaces inside quotes are the value's.
        assert_eq!(parts(&parse(r#"foo=" bar ""#)), ("foo", MatchOp::Equal, " bar "));
    }

    #[test]
    fn escapes_unescape_as_alertmanager_does() {
        assert_eq!(parse(r#"foo="a\"b""#).value(), "a\"b");
        assert_eq!(parse(r#"foo="a\\b""#).value(), "a\\b");
        assert_eq!(parse(r#"foo="a\nb""#).value(), "a\nb");
        // A spurious escape keeps its backslash, so regex escapes survive.
        assert_eq!(parse(r#"foo=~"a\.b""#).value(), "a\\.b");
        assert_eq!(parse(r#"foo=~"\d+""#).value(), "\\d+");
        // A trailing backslash in a bare value is literal.
        assert_eq!(parse(r"foo=bar\").value(), "bar\\");
        // Non-ASCII values are values.
        assert_eq!(parse(r#"foo="čćž""#).value(), "čćž");
    }

    #[test]
    fn unescaped_or_unbalanced_quotes_are_refused() {
        for bad in [r#"foo="bar"#, r#"foo=bar""#, r#"foo="b"ar""#, r#"foo="bar"baz"#, r#"foo="bar\"#, r#"foo=""""#] {
            assert!(
                matches!(bad.parse::<Matcher>(), Err(MatcherError::UnescapedQuote(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn malformed_matchers_are_refused_with_the_reason() {
        for bad in ["", "foo", "=bar", "1foo=bar", "foo~=bar", "foo-bar=baz", "foo bar=baz", r#""foo"="bar""#] {
            let got = bad.parse::<Matcher>();
            assert!(got.is_err(), "{bad:?} should be refused, got {got:?}");
        }
        // `foo==` is `foo` equal to `=`, as in Alertmanager: the value is bare.
        assert_eq!(parse("foo==").value(), "=");
        assert!(matches!("foo=~(".parse::<Matcher>(), Err(MatcherError::Regex { .. })));
    }

    #[test]
    fn label_names_follow_prometheus() {
        assert!(is_label_name("alertname"));
        assert!(is_label_name("_x:y_1"));
        assert!(is_label_name(":a"));
        assert!(!is_label_name(""));
        assert!(!is_label_name("1a"));
        assert!(!is_label_name("a-b"));
        assert!(!is_label_name("a.b"));
    }

    #[test]
    fn regexes_are_anchored_at_both_ends() {
        let m = parse(r#"pod=~"web-.*""#);
        assert!(m.matches(Some("web-1")));
        assert!(!m.matches(Some("my-web-1")), "anchored at the start");
        let m = parse(r#"a=~"b""#);
        assert!(!m.matches(Some("abc")), "anchored at the end");
        // An alternation is anchored as a whole, not only its first and last branch.
        let m = parse(r#"a=~"x|y""#);
        assert!(m.matches(Some("y")));
        assert!(!m.matches(Some("xy")));
        assert!(!m.matches(Some("yz")));
        let m = parse(r#"a!~"x|y""#);
        assert!(m.matches(Some("xy")));
        assert!(!m.matches(Some("x")));
    }

    #[test]
    fn a_missing_label_is_the_empty_value() {
        assert!(parse(r#"severity!="info""#).matches(None));
        assert!(!parse(r#"severity="info""#).matches(None));
        assert!(parse(r#"severity="""#).matches(None));
        assert!(parse(r#"severity=~".*""#).matches(None));
        assert!(!parse(r#"severity=~".+""#).matches(None));
        assert!(parse(r#"severity!~".+""#).matches(None));
    }

    #[test]
    fn equality_matchers_name_their_index_key() {
        assert_eq!(parse("a=b").equal_value(), Some("b"));
        assert_eq!(parse("a!=b").equal_value(), None);
        assert_eq!(parse("a=~b").equal_value(), None);
    }

    #[test]
    fn display_writes_a_form_that_parses_back_to_the_same_matcher() {
        for s in [r#"a="b""#, r#"a!~"x\"y\\z""#, "a=~\"l1\\nl2\"", r#"a!="""#] {
            let m = parse(s);
            assert_eq!(m.to_string(), s);
            assert_eq!(parse(&m.to_string()), m);
        }
        assert_eq!(parse("namespace=shop").to_string(), r#"namespace="shop""#);
    }

    #[test]
    fn lists_parse_with_or_without_braces_and_keep_commas_in_quotes() {
        let list = parse_list(r#"{alertname="Kube,Pod", severity=~"warn|crit"}"#).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(parts(&list[0]), ("alertname", MatchOp::Equal, "Kube,Pod"));
        assert_eq!(parts(&list[1]), ("severity", MatchOp::Regex, "warn|crit"));
        let list = parse_list(r#"a=1,b="x\",y""#).unwrap();
        assert_eq!(parts(&list[1]), ("b", MatchOp::Equal, "x\",y"));
        assert_eq!(parse_list("{}").unwrap(), Vec::new());
        assert_eq!(parse_list("").unwrap(), Vec::new());
        assert!(parse_list("a=1,,b=2").is_err(), "an empty matcher between commas");
    }

    #[test]
    fn all_match_needs_every_matcher() {
        let ms = parse_list(r#"alertname=~"Kube.*",namespace="shop""#).unwrap();
        let labels = [("alertname", "KubePodCrashLooping"), ("namespace", "shop")];
        let get = |n: &str| labels.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert!(all_match(&ms, get));
        let other = [("alertname", "KubePodCrashLooping"), ("namespace", "bank")];
        assert!(!all_match(&ms, |n: &str| other.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)));
        assert!(all_match(&[], |_| None), "no matcher matches everything");
    }

    #[test]
    fn a_huge_regex_is_refused_not_compiled() {
        let huge = format!("a=~\"{}\"", "(x{1000}){1000}");
        assert!(matches!(huge.parse::<Matcher>(), Err(MatcherError::Regex { .. })));
    }
}
