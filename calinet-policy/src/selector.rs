//! Calico's label selector language: parser, evaluator and canonical printer.
//!
//! Grammar (precedence from loosest to tightest: `||`, `&&`, `!`):
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" expr ")" | "all()" | "global()" | "has(" key ")"
//!          | key "==" str | key "!=" str | key "in" set | key "not" "in" set
//!          | key "contains" str | key "starts" "with" str | key "ends" "with" str
//! set     := "{" [ str ( "," str )* ] "}"
//! str     := '"' chars '"' | "'" chars "'"
//! key     := [A-Za-z0-9_./-]+
//! ```
//!
//! The empty selector (only whitespace) means `all()`, as in Calico.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

/// The label every namespaced endpoint carries; `global()` matches entities without it.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";

/// Read access to a set of labels, so selectors evaluate over any map type.
pub trait Labels {
    /// The value of `key`, if the label is present.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<S: std::hash::BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<L: Labels + ?Sized> Labels for &L {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

/// A parsed selector expression.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Expr {
    /// `all()`: matches everything.
    All,
    /// `global()`: matches entities that are not namespaced (no [`NAMESPACE_LABEL`]).
    Global,
    /// `has(key)`.
    Has(String),
    /// `key == "value"`: the label is present and equal.
    Eq(String, String),
    /// `key != "value"`: the label is absent or different.
    Ne(String, String),
    /// `key in {..}`: the label is present and one of the values.
    In(String, BTreeSet<String>),
    /// `key not in {..}`: the label is absent or none of the values.
    NotIn(String, BTreeSet<String>),
    /// `key contains "s"`.
    Contains(String, String),
    /// `key starts with "s"`.
    StartsWith(String, String),
    /// `key ends with "s"`.
    EndsWith(String, String),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b && ..` (two or more operands; n-ary so long chains stay shallow).
    And(Vec<Expr>),
    /// `a || b || ..` (two or more operands).
    Or(Vec<Expr>),
}

impl Expr {
    /// Evaluates the expression over `labels`.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Expr::All => true,
            Expr::Global => labels.label(NAMESPACE_LABEL).is_none(),
            Expr::Has(k) => labels.label(k).is_some(),
            Expr::Eq(k, v) => labels.label(k) == Some(v.as_str()),
            Expr::Ne(k, v) => labels.label(k) != Some(v.as_str()),
            Expr::In(k, vs) => labels.label(k).is_some_and(|x| vs.contains(x)),
            Expr::NotIn(k, vs) => !labels.label(k).is_some_and(|x| vs.contains(x)),
            Expr::Contains(k, s) => labels.label(k).is_some_and(|x| x.contains(s.as_str())),
            Expr::StartsWith(k, s) => labels.label(k).is_some_and(|x| x.starts_with(s.as_str())),
            Expr::EndsWith(k, s) => labels.label(k).is_some_and(|x| x.ends_with(s.as_str())),
            Expr::Not(e) => !e.matches(labels),
            Expr::And(es) => es.iter().all(|e| e.matches(labels)),
            Expr::Or(es) => es.iter().any(|e| e.matches(labels)),
        }
    }

    /// Every label key the expression reads (used by the label index).
    pub fn keys(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::All => {}
            Expr::Global => {
                out.insert(NAMESPACE_LABEL.to_owned());
            }
            Expr::Has(k)
            | Expr::Eq(k, _)
            | Expr::Ne(k, _)
            | Expr::In(k, _)
            | Expr::NotIn(k, _)
            | Expr::Contains(k, _)
            | Expr::StartsWith(k, _)
            | Expr::EndsWith(k, _) => {
                out.insert(k.clone());
            }
            Expr::Not(e) => e.keys(out),
            Expr::And(es) | Expr::Or(es) => es.iter().for_each(|e| e.keys(out)),
        }
    }

    /// Rewrites every label key through `f` (used to turn a `namespaceSelector`
    /// into a selector over inherited namespace labels); `global()` becomes `g`.
    pub fn map_keys(&self, f: &dyn Fn(&str) -> String, g: &Expr) -> Expr {
        let m = |e: &Expr| Box::new(e.map_keys(f, g));
        let v = |es: &[Expr]| es.iter().map(|e| e.map_keys(f, g)).collect();
        match self {
            Expr::All => Expr::All,
            Expr::Global => g.clone(),
            Expr::Has(k) => Expr::Has(f(k)),
            Expr::Eq(k, v) => Expr::Eq(f(k), v.clone()),
            Expr::Ne(k, v) => Expr::Ne(f(k), v.clone()),
            Expr::In(k, v) => Expr::In(f(k), v.clone()),
            Expr::NotIn(k, v) => Expr::NotIn(f(k), v.clone()),
            Expr::Contains(k, v) => Expr::Contains(f(k), v.clone()),
            Expr::StartsWith(k, v) => Expr::StartsWith(f(k), v.clone()),
            Expr::EndsWith(k, v) => Expr::EndsWith(f(k), v.clone()),
            Expr::Not(e) => Expr::Not(m(e)),
            Expr::And(es) => Expr::And(v(es)),
            Expr::Or(es) => Expr::Or(v(es)),
        }
    }

    fn is_binary(&self) -> bool {
        matches!(self, Expr::And(..) | Expr::Or(..))
    }
}

/// True when `c` may appear in a label key.
pub fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

fn write_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    // Calico strings have no escapes: pick the quote the value does not contain.
    if s.contains('"') {
        write!(f, "'{s}'")
    } else {
        write!(f, "\"{s}\"")
    }
}

fn write_set(f: &mut fmt::Formatter<'_>, vs: &BTreeSet<String>) -> fmt::Result {
    f.write_str("{")?;
    for (i, v) in vs.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_str(f, v)?;
    }
    f.write_str("}")
}

fn write_child(f: &mut fmt::Formatter<'_>, e: &Expr, paren: bool) -> fmt::Result {
    if paren {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Global => f.write_str("global()"),
            Expr::Has(k) => write!(f, "has({k})"),
            Expr::Eq(k, v) => {
                write!(f, "{k} == ")?;
                write_str(f, v)
            }
            Expr::Ne(k, v) => {
                write!(f, "{k} != ")?;
                write_str(f, v)
            }
            Expr::In(k, vs) => {
                write!(f, "{k} in ")?;
                write_set(f, vs)
            }
            Expr::NotIn(k, vs) => {
                write!(f, "{k} not in ")?;
                write_set(f, vs)
            }
            Expr::Contains(k, v) => {
                write!(f, "{k} contains ")?;
                write_str(f, v)
            }
            Expr::StartsWith(k, v) => {
                write!(f, "{k} starts with ")?;
                write_str(f, v)
            }
            Expr::EndsWith(k, v) => {
                write!(f, "{k} ends with ")?;
                write_str(f, v)
            }
            Expr::Not(e) => {
                f.write_str("!")?;
                let paren = !matches!(**e, Expr::All | Expr::Global | Expr::Has(_) | Expr::Not(_));
                write_child(f, e, paren)
            }
            // A nested operand of the same operator keeps its parentheses, so the
            // printed form parses back to the same tree.
            Expr::And(es) => {
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" && ")?;
                    }
                    write_child(f, e, e.is_binary())?;
                }
                Ok(())
            }
            Expr::Or(es) => {
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" || ")?;
                    }
                    write_child(f, e, matches!(e, Expr::Or(..)))?;
                }
                Ok(())
            }
        }
    }
}

/// A selector that failed to parse: where, and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: at byte {position}: expected {expected}, found {found}")]
pub struct ParseError {
    /// The selector text.
    pub input: String,
    /// Byte offset of the problem.
    pub position: usize,
    /// What the grammar allows at that point.
    pub expected: &'static str,
    /// What was there instead.
    pub found: String,
}

/// A validated selector: parsed once, printed canonically, serialised as its text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector(Expr);

impl Selector {
    /// `all()`.
    pub fn all() -> Self {
        Selector(Expr::All)
    }

    /// Parses selector text.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        Parser::new(input).parse_all().map(Selector)
    }

    /// Wraps an expression.
    pub fn from_expr(expr: Expr) -> Self {
        Selector(expr)
    }

    /// The expression tree.
    pub fn expr(&self) -> &Expr {
        &self.0
    }

    /// Evaluates the selector over `labels`.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.0.matches(labels)
    }

    /// `self && other`, dropping a redundant `all()`.
    pub fn and(&self, other: &Selector) -> Selector {
        match (&self.0, &other.0) {
            (Expr::All, _) => other.clone(),
            (_, Expr::All) => self.clone(),
            (a, b) => Selector(Expr::And(vec![a.clone(), b.clone()])),
        }
    }
}

impl Default for Selector {
    fn default() -> Self {
        Selector::all()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Selector {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Selector::parse(&s).map_err(serde::de::Error::custom)
    }
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
}

// Recursion depth bound, so hostile input ("((((((...") cannot overflow the stack.
const MAX_DEPTH: usize = 128;

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser { input, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.input[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.input.len() - trimmed.len();
    }

    fn err<T>(&self, expected: &'static str) -> Result<T, ParseError> {
        let found = match self.rest().chars().next() {
            None => "end of input".to_owned(),
            Some(_) => {
                let word: String = self.rest().chars().take(12).collect();
                format!("{word:?}")
            }
        };
        Err(ParseError {
            input: self.input.to_owned(),
            position: self.pos,
            expected,
            found,
        })
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Eats a keyword only when it is not the prefix of a longer key.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_ws();
        let r = self.rest();
        if r.starts_with(word) && !r[word.len()..].starts_with(is_key_char) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str, expected: &'static str) -> Result<(), ParseError> {
        if self.eat(tok) {
            Ok(())
        } else {
            self.err(expected)
        }
    }

    fn parse_all(mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        if self.rest().is_empty() {
            return Ok(Expr::All);
        }
        let e = self.parse_or(0)?;
        self.skip_ws();
        if !self.rest().is_empty() {
            return self.err("\"&&\", \"||\" or end of selector");
        }
        Ok(e)
    }

    fn parse_or(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut es = vec![self.parse_and(depth)?];
        while self.eat("||") {
            es.push(self.parse_and(depth)?);
        }
        Ok(if es.len() == 1 {
            es.remove(0)
        } else {
            Expr::Or(es)
        })
    }

    fn parse_and(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut es = vec![self.parse_unary(depth)?];
        while self.eat("&&") {
            es.push(self.parse_unary(depth)?);
        }
        Ok(if es.len() == 1 {
            es.remove(0)
        } else {
            Expr::And(es)
        })
    }

    fn parse_unary(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if depth > MAX_DEPTH {
            return self.err("a less deeply nested selector");
        }
        self.skip_ws();
        // "!" but not "!=" (which can only follow a key, so this is unambiguous).
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.pos += 1;
            let inner = self.parse_unary(depth + 1)?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.parse_primary(depth)
    }

    fn parse_primary(&mut self, depth: usize) -> Result<Expr, ParseError> {
        self.skip_ws();
        if self.eat("(") {
            let e = self.parse_or(depth + 1)?;
            self.expect(")", "\")\"")?;
            return Ok(e);
        }
        let start = self.pos;
        let key = self.parse_key()?;
        // Function forms: only when the word is directly followed by "(".
        let after = self.pos;
        if matches!(key.as_str(), "all" | "global" | "has") && self.eat("(") {
            match key.as_str() {
                "all" => {
                    self.expect(")", "\")\" after \"all(\"")?;
                    return Ok(Expr::All);
                }
                "global" => {
                    self.expect(")", "\")\" after \"global(\"")?;
                    return Ok(Expr::Global);
                }
                _ => {
                    let k = self.parse_key()?;
                    self.expect(")", "\")\" after the label in has(..)")?;
                    return Ok(Expr::Has(k));
                }
            }
        }
        self.pos = after;
        let _ = start;
        if self.eat("==") {
            return Ok(Expr::Eq(key, self.parse_string()?));
        }
        if self.eat("!=") {
            return Ok(Expr::Ne(key, self.parse_string()?));
        }
        if self.eat_word("in") {
            return Ok(Expr::In(key, self.parse_set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return self.err("\"in\" after \"not\"");
            }
            return Ok(Expr::NotIn(key, self.parse_set()?));
        }
        if self.eat_word("contains") {
            return Ok(Expr::Contains(key, self.parse_string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return self.err("\"with\" after \"starts\"");
            }
            return Ok(Expr::StartsWith(key, self.parse_string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return self.err("\"with\" after \"ends\"");
            }
            return Ok(Expr::EndsWith(key, self.parse_string()?));
        }
        self.skip_ws();
        self.err("an operator (==, !=, in, not in, contains, starts with, ends with)")
    }

    fn parse_key(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let len: usize = self
            .rest()
            .chars()
            .take_while(|c| is_key_char(*c))
            .map(char::len_utf8)
            .sum();
        if len == 0 {
            return self.err("a label key, \"(\", \"!\", all(), global() or has(..)");
        }
        let k = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(k)
    }

    fn parse_string(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => return self.err("a quoted string"),
        };
        let body = &self.rest()[1..];
        match body.find(quote) {
            Some(end) => {
                let s = body[..end].to_owned();
                self.pos += end + 2;
                Ok(s)
            }
            None => self.err("a closing quote"),
        }
    }

    fn parse_set(&mut self) -> Result<BTreeSet<String>, ParseError> {
        self.expect("{", "\"{\" starting a set of values")?;
        let mut set = BTreeSet::new();
        if self.eat("}") {
            return Ok(set);
        }
        loop {
            set.insert(self.parse_string()?);
            if self.eat("}") {
                return Ok(set);
            }
            self.expect(",", "\",\" or \"}\" in a set of values")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(sel: &str, l: &[(&str, &str)]) -> bool {
        Selector::parse(sel).unwrap().matches(&labels(l))
    }

    #[test]
    fn operators_evaluate_as_calico_documents() {
        let web = [("app", "web"), ("tier", "frontend")];
        assert!(m("app == 'web'", &web));
        assert!(!m("app == \"db\"", &web));
        assert!(m("app != 'db'", &web));
        assert!(m("missing != 'x'", &web), "!= is true when absent");
        assert!(!m("app != 'web'", &web));
        assert!(m("app in {'web', 'api'}", &web));
        assert!(!m("missing in {'web'}", &web));
        assert!(
            m("missing not in {'web'}", &web),
            "not in is true when absent"
        );
        assert!(!m("app not in {'web'}", &web));
        assert!(m("has(tier)", &web));
        assert!(!m("!has(tier)", &web));
        assert!(m("!has(zone)", &web));
        assert!(m("all()", &web));
        assert!(m("", &web), "empty selector is all()");
        assert!(m("tier contains 'ont'", &web));
        assert!(m("tier starts with 'front'", &web));
        assert!(m("tier ends with 'end'", &web));
        assert!(!m("zone contains ''", &web), "contains needs the label");
        assert!(m("app == 'db' || tier == 'frontend'", &web));
        assert!(!m("app == 'db' && tier == 'frontend'", &web));
        assert!(m("!(app == 'db' && tier == 'frontend')", &web));
        assert!(m("global()", &web));
        assert!(!m("global()", &[(NAMESPACE_LABEL, "default")]));
    }

    #[test]
    fn precedence_and_binds_tighter_than_or_and_not_tighter_than_and() {
        let s = Selector::parse("a == '1' || b == '2' && !c == '3'").unwrap();
        let expected = Expr::Or(vec![
            Expr::Eq("a".into(), "1".into()),
            Expr::And(vec![
                Expr::Eq("b".into(), "2".into()),
                Expr::Not(Box::new(Expr::Eq("c".into(), "3".into()))),
            ]),
        ]);
        assert_eq!(s.expr(), &expected);
        assert_eq!(s.to_string(), "a == \"1\" || b == \"2\" && !(c == \"3\")");
    }

    #[test]
    fn keywords_can_be_label_keys() {
        assert!(m("has == 'x'", &[("has", "x")]));
        assert!(m("all in {'x'}", &[("all", "x")]));
        assert!(m("notice not in {'x'}", &[("notice", "y")]));
        assert!(m("inside == 'y'", &[("inside", "y")]));
    }

    #[test]
    fn errors_point_at_the_position_and_say_what_was_expected() {
        let e = Selector::parse("app == web").unwrap_err();
        assert_eq!(e.position, 7);
        assert_eq!(e.expected, "a quoted string");
        assert!(e.to_string().contains("at byte 7"), "{e}");

        let e = Selector::parse("app = 'web'").unwrap_err();
        assert_eq!(e.position, 4);
        assert!(e.expected.starts_with("an operator"));

        let e = Selector::parse("(a == 'x'").unwrap_err();
        assert_eq!((e.position, e.expected), (9, "\")\""));
        assert_eq!(e.found, "end of input");

        let e = Selector::parse("a in {'x' 'y'}").unwrap_err();
        assert_eq!(
            (e.position, e.expected),
            (10, "\",\" or \"}\" in a set of values")
        );

        let e = Selector::parse("a not on {'x'}").unwrap_err();
        assert_eq!(e.expected, "\"in\" after \"not\"");

        let e = Selector::parse("a == 'x' b == 'y'").unwrap_err();
        assert_eq!(
            (e.position, e.expected),
            (9, "\"&&\", \"||\" or end of selector")
        );

        let e = Selector::parse("has(").unwrap_err();
        assert_eq!(e.position, 4);

        let e = Selector::parse("a == 'unterminated").unwrap_err();
        assert_eq!(e.expected, "a closing quote");
    }

    #[test]
    fn canonical_print_round_trips() {
        for s in [
            "a == 'x' && (b == 'y' || c == 'z')",
            "(a == 'x' && b == 'y') && c == 'z'",
            "a == 'x' && (b == 'y' && c == 'z')",
            "a == 'x' || (b == 'y' || c == 'z')",
            "!!has(a)",
            "k in {'b', 'a', \"it's\"}",
            "v == '\"quoted\"'",
            "global() || all()",
        ] {
            let p = Selector::parse(s).unwrap();
            let printed = p.to_string();
            assert_eq!(Selector::parse(&printed).unwrap(), p, "{s} -> {printed}");
        }
        assert_eq!(
            Selector::parse("k in {'b','a'}").unwrap().to_string(),
            "k in {\"a\", \"b\"}"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "(".repeat(10_000) + "all()" + &")".repeat(10_000);
        let e = Selector::parse(&deep).unwrap_err();
        assert_eq!(e.expected, "a less deeply nested selector");
        let bangs = "!".repeat(10_000) + "all()";
        assert!(Selector::parse(&bangs).is_err());
        // Long flat chains are fine: they parse into one n-ary node.
        let chain = vec!["has(a)"; 50_000].join(" && ");
        let s = Selector::parse(&chain).unwrap();
        assert!(s.matches(&labels(&[("a", "")])));
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let s: Selector = serde_json::from_str("\"app == 'web'\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"app == \\\"web\\\"\"");
        let e = serde_json::from_str::<Selector>("\"app ==\"").unwrap_err();
        assert!(e.to_string().contains("expected a quoted string"), "{e}");
    }
}
