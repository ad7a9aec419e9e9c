//! CoRE Link Format (`application/link-format`, 40, RFC 6690) as LwM2M uses it.
//!
//! Three layers:
//! - the generic syntax: [`parse_links`] / [`format_links`] over [`Link`] and [`LinkParam`]
//!   (RFC 6690 §2: `<target>;name;name=token;name="quoted \"string\""`, links separated by
//!   commas). Whitespace around `,` and `;` is tolerated, since LwM2M examples and clients
//!   write `</1/0>, </3/0>`;
//! - the Register / Update payload: [`RegistrationLinks`] (Core TS 1.0 §5.3.1, Core TS 1.1
//!   §6.2.1): the alternate path, the supported content formats and the object instances;
//! - notification attributes and Discover: [`Attributes`] (Core TS 1.1 §5.1.2),
//!   [`AttributeUpdate`] for the Uri-Query of Write-Attributes (Core TS 1.1 §6.3,
//!   "Write-Attributes") and [`DiscoverEntry`] with [`discover_links`] / [`parse_discover`]
//!   for Discover and Bootstrap-Discover responses (Core TS 1.1 §6.3 "Discover", §6.1
//!   "Bootstrap-Discover").
//!
//! Parsing never panics; syntax errors carry the byte offset.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ids::{InstanceId, Lwm2mPath, ObjectId};

/// One link: `<target>` and its parameters in the order given (RFC 6690 §2 `link-value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The URI reference between `<` and `>`, e.g. `/3/0`.
    pub target: String,
    /// The parameters, e.g. `rt="oma.lwm2m"` or `dim=2`.
    pub params: Vec<LinkParam>,
}

/// A link parameter: `name` alone or `name=value` (RFC 6690 §2 `link-extension`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkParam {
    /// The parameter name, as written.
    pub name: String,
    /// The value with quotes and backslash escapes removed; `None` for a bare name.
    pub value: Option<String>,
}

impl LinkParam {
    /// `name=value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    /// A bare `name` without a value.
    pub fn flag(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: None,
        }
    }
}

impl Link {
    /// A link to `target` without parameters.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            params: Vec::new(),
        }
    }

    /// The first parameter called `name` (names compare case-insensitively, RFC 8288 §3).
    pub fn param(&self, name: &str) -> Option<&LinkParam> {
        self.params
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The value of the first parameter called `name`, if it has one.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.param(name).and_then(|p| p.value.as_deref())
    }
}

/// Parameters whose values are written as quoted strings even when they are tokens
/// (RFC 6690 §2: `rt`, `if`, `anchor`, `rel`, `title`; LwM2M writes `rt="oma.lwm2m"` and
/// `uri="coaps://…"`).
const ALWAYS_QUOTED: [&str; 6] = ["rt", "if", "anchor", "rel", "title", "uri"];

/// RFC 6690 §2 `ptokenchar`: what a value may hold without quotes.
fn is_ptoken_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'()*+-./:<=>?@[]^_`{|}~".contains(&c)
}

/// A parameter name character (RFC 5987 `attr-char` plus `*` for `title*`).
fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$&+-.^_`|~*".contains(&c)
}

fn needs_quotes(name: &str, value: &str) -> bool {
    value.is_empty()
        || !value.bytes().all(is_ptoken_char)
        || ALWAYS_QUOTED.iter().any(|q| q.eq_ignore_ascii_case(name))
}

impl fmt::Display for LinkParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        match &self.value {
            None => Ok(()),
            Some(v) if needs_quotes(&self.name, v) => {
                f.write_str("=\"")?;
                for c in v.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
            Some(v) => write!(f, "={v}"),
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.target)?;
        for p in &self.params {
            write!(f, ";{p}")?;
        }
        Ok(())
    }
}

/// Why a link-format payload or an attribute set is rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The text is not RFC 6690 link format.
    #[error("link format: malformed at byte {offset}: {reason}")]
    Syntax {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A link target is not what LwM2M expects there (an LwM2M path in Discover).
    #[error("link <{target}>: {reason}")]
    Target {
        /// The target as written.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// A notification attribute or property is invalid.
    #[error(transparent)]
    Attribute(#[from] AttributeError),
}

/// Why notification attributes are rejected (Core TS 1.1 §5.1.2; a client answers
/// Write-Attributes with 4.00 Bad Request).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AttributeError {
    /// The name is not a writable notification attribute.
    #[error("{name:?} is not a writable attribute")]
    Unknown {
        /// The name as given.
        name: String,
    },
    /// The same attribute appears twice.
    #[error("attribute {name} is given twice")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// A value is missing where one is required (Discover, or a property).
    #[error("attribute {name} has no value")]
    MissingValue {
        /// The name.
        name: String,
    },
    /// A value does not parse.
    #[error("attribute {name}={value:?}: {reason}")]
    InvalidValue {
        /// The name.
        name: String,
        /// The value as given.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// The attributes together break a rule of Core TS 1.1 §5.1.2.
    #[error("inconsistent attributes: {rule}")]
    Inconsistent {
        /// The rule and the values, in words.
        rule: String,
    },
}

/// Parses a link-format payload (RFC 6690 §2). An empty or all-blank text is an empty list.
pub fn parse_links(s: &str) -> Result<Vec<Link>, LinkError> {
    let mut p = Parser {
        b: s.as_bytes(),
        pos: 0,
    };
    let mut links = Vec::new();
    p.skip_ws();
    if p.peek().is_none() {
        return Ok(links);
    }
    loop {
        links.push(p.link()?);
        p.skip_ws();
        match p.peek() {
            None => return Ok(links),
            Some(b',') => {
                p.pos += 1;
                p.skip_ws();
            }
            Some(_) => return Err(p.error("expected ',' or ';' after a link")),
        }
    }
}

/// Parses a link-format CoAP payload, which must be UTF-8.
pub fn parse_link_payload(bytes: &[u8]) -> Result<Vec<Link>, LinkError> {
    let s = std::str::from_utf8(bytes).map_err(|e| LinkError::Syntax {
        offset: e.valid_up_to(),
        reason: "not UTF-8".into(),
    })?;
    parse_links(s)
}

/// Formats links as one link-format text, comma-separated without spaces.
pub fn format_links(links: &[Link]) -> String {
    links
        .iter()
        .map(Link::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn error(&self, reason: &str) -> LinkError {
        LinkError::Syntax {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// The text from `start` to the current position (always at ASCII boundaries).
    fn text_from(&self, start: usize) -> Result<String, LinkError> {
        let bytes = self.b.get(start..self.pos).unwrap_or_default();
        String::from_utf8(bytes.to_vec()).map_err(|_| LinkError::Syntax {
            offset: start,
            reason: "not UTF-8".into(),
        })
    }

    fn link(&mut self) -> Result<Link, LinkError> {
        if self.peek() != Some(b'<') {
            return Err(self.error("expected '<' to start a link"));
        }
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated '<' (no '>')")),
                Some(b'>') => break,
                Some(c) if c.is_ascii_control() || c == b' ' || c == b'<' => {
                    return Err(self.error("invalid character in a link target"));
                }
                Some(_) => self.pos += 1,
            }
        }
        let target = self.text_from(start)?;
        self.pos += 1;
        let mut params = Vec::new();
        loop {
            let before = self.pos;
            self.skip_ws();
            if self.peek() != Some(b';') {
                self.pos = before;
                return Ok(Link { target, params });
            }
            self.pos += 1;
            self.skip_ws();
            params.push(self.param()?);
        }
    }

    fn param(&mut self) -> Result<LinkParam, LinkError> {
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected a parameter name"));
        }
        let name = self.text_from(start)?;
        if self.peek() != Some(b'=') {
            return Ok(LinkParam { name, value: None });
        }
        self.pos += 1;
        let value = if self.peek() == Some(b'"') {
            self.quoted()?
        } else {
            let start = self.pos;
            while self.peek().is_some_and(is_ptoken_char) {
                self.pos += 1;
            }
            if self.pos == start {
                return Err(self.error("expected a value after '='"));
            }
            self.text_from(start)?
        };
        Ok(LinkParam {
            name,
            value: Some(value),
        })
    }

    /// RFC 6690 §2 / RFC 7230 §3.2.6 quoted-string: `\` escapes the next character.
    fn quoted(&mut self) -> Result<String, LinkError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => {
                    return Err(LinkError::Syntax {
                        offset: open,
                        reason: "unterminated quoted string".into(),
                    });
                }
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(c) = self.peek() else {
                        return Err(self.error("backslash at the end of the input"));
                    };
                    out.push(c);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| LinkError::Syntax {
            offset: open,
            reason: "quoted string is not UTF-8".into(),
        })
    }
}

/// An unsigned decimal of digits only (no sign, no spaces).
fn parse_uint<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A finite decimal number (`5`, `-3.25`, `1e3`).
fn parse_number(s: &str) -> Option<f64> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

// ---------------------------------------------------------------------------------------
// Notification attributes

/// A notification attribute that Write-Attributes can set (Core TS 1.1 §5.1.2,
/// `<NOTIFICATION>` class; `epmin`/`epmax` are LwM2M 1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttributeName {
    /// Minimum Period, seconds.
    Pmin,
    /// Maximum Period, seconds.
    Pmax,
    /// Greater Than.
    Gt,
    /// Less Than.
    Lt,
    /// Step.
    St,
    /// Minimum Evaluation Period, seconds (1.1).
    Epmin,
    /// Maximum Evaluation Period, seconds (1.1).
    Epmax,
}

impl AttributeName {
    /// Every attribute, in the order they are written.
    pub const ALL: [Self; 7] = [
        Self::Pmin,
        Self::Pmax,
        Self::Gt,
        Self::Lt,
        Self::St,
        Self::Epmin,
        Self::Epmax,
    ];

    /// The name on the wire (`pmin`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pmin => "pmin",
            Self::Pmax => "pmax",
            Self::Gt => "gt",
            Self::Lt => "lt",
            Self::St => "st",
            Self::Epmin => "epmin",
            Self::Epmax => "epmax",
        }
    }

    /// The attribute for a wire name (exact, lower case).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The notification attributes of one level (object, instance, resource or resource
/// instance), as Write-Attributes sets them and Discover shows them (Core TS 1.1 §5.1.2).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Attributes {
    /// Minimum Period (seconds).
    pub pmin: Option<u32>,
    /// Maximum Period (seconds).
    pub pmax: Option<u32>,
    /// Greater Than threshold.
    pub gt: Option<f64>,
    /// Less Than threshold.
    pub lt: Option<f64>,
    /// Step.
    pub st: Option<f64>,
    /// Minimum Evaluation Period (seconds, 1.1).
    pub epmin: Option<u32>,
    /// Maximum Evaluation Period (seconds, 1.1).
    pub epmax: Option<u32>,
}

impl Attributes {
    /// True if no attribute is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The value of one attribute as written on the wire (`10`, `42.2`), if set.
    pub fn value_text(&self, name: AttributeName) -> Option<String> {
        let int = |v: Option<u32>| v.map(|v| v.to_string());
        let float = |v: Option<f64>| v.map(|v| v.to_string());
        match name {
            AttributeName::Pmin => int(self.pmin),
            AttributeName::Pmax => int(self.pmax),
            AttributeName::Gt => float(self.gt),
            AttributeName::Lt => float(self.lt),
            AttributeName::St => float(self.st),
            AttributeName::Epmin => int(self.epmin),
            AttributeName::Epmax => int(self.epmax),
        }
    }

    /// Sets one attribute from its wire text.
    pub fn set_text(&mut self, name: AttributeName, value: &str) -> Result<(), AttributeError> {
        let bad = |reason| AttributeError::InvalidValue {
            name: name.as_str().into(),
            value: value.into(),
            reason,
        };
        let int = || parse_uint::<u32>(value).ok_or_else(|| bad("expected seconds 0..=2^32-1"));
        let float = || parse_number(value).ok_or_else(|| bad("expected a finite decimal number"));
        match name {
            AttributeName::Pmin => self.pmin = Some(int()?),
            AttributeName::Pmax => self.pmax = Some(int()?),
            AttributeName::Gt => self.gt = Some(float()?),
            AttributeName::Lt => self.lt = Some(float()?),
            AttributeName::St => self.st = Some(float()?),
            AttributeName::Epmin => self.epmin = Some(int()?),
            AttributeName::Epmax => self.epmax = Some(int()?),
        }
        Ok(())
    }

    /// Removes one attribute.
    pub fn clear(&mut self, name: AttributeName) {
        match name {
            AttributeName::Pmin => self.pmin = None,
            AttributeName::Pmax => self.pmax = None,
            AttributeName::Gt => self.gt = None,
            AttributeName::Lt => self.lt = None,
            AttributeName::St => self.st = None,
            AttributeName::Epmin => self.epmin = None,
            AttributeName::Epmax => self.epmax = None,
        }
    }

    /// These attributes with the unset ones taken from `parent` (attributes are inherited
    /// object → instance → resource → resource instance, Core TS 1.1 §5.1.2).
    pub fn inherit(&self, parent: &Self) -> Self {
        Self {
            pmin: self.pmin.or(parent.pmin),
            pmax: self.pmax.or(parent.pmax),
            gt: self.gt.or(parent.gt),
            lt: self.lt.or(parent.lt),
            st: self.st.or(parent.st),
            epmin: self.epmin.or(parent.epmin),
            epmax: self.epmax.or(parent.epmax),
        }
    }

    /// Checks the "Change Value Conditions" of Core TS 1.1 §5.1.2: when `lt` and `gt` are
    /// both set, `lt < gt` and `lt + 2*st < gt` (a Write-Attributes request that breaks them
    /// MUST be rejected). Also rejects non-finite thresholds and a negative step, which no
    /// rule allows. `pmax < pmin` is not an error: pmax is then ignored
    /// ([`Attributes::effective_pmax`]).
    pub fn validate(&self) -> Result<(), AttributeError> {
        let fail = |rule: String| Err(AttributeError::Inconsistent { rule });
        for (name, v) in [("gt", self.gt), ("lt", self.lt), ("st", self.st)] {
            if v.is_some_and(|v| !v.is_finite()) {
                return fail(format!("{name} is not a finite number"));
            }
        }
        if let Some(st) = self.st
            && st < 0.0
        {
            return fail(format!("st={st} is negative"));
        }
        if let (Some(lt), Some(gt)) = (self.lt, self.gt) {
            if lt >= gt {
                return fail(format!("lt={lt} must be below gt={gt}"));
            }
            let st = self.st.unwrap_or(0.0);
            if lt + 2.0 * st >= gt {
                return fail(format!(
                    "lt + 2*st = {} must be below gt={gt}",
                    lt + 2.0 * st
                ));
            }
        }
        Ok(())
    }

    /// The Maximum Period that applies: `pmax`, unless it is smaller than `pmin`, in which
    /// case it MUST be ignored (Core TS 1.1 §5.1.2).
    pub fn effective_pmax(&self) -> Option<u32> {
        self.pmax
            .filter(|pmax| self.pmin.is_none_or(|pmin| *pmax >= pmin))
    }

    /// The set attributes as link parameters, in [`AttributeName::ALL`] order.
    pub fn to_params(&self) -> Vec<LinkParam> {
        AttributeName::ALL
            .into_iter()
            .filter_map(|a| self.value_text(a).map(|v| LinkParam::new(a.as_str(), v)))
            .collect()
    }
}

/// The attribute changes of one Write-Attributes request (Core TS 1.1 §6.3,
/// "Write-Attributes"): values to set, and attributes given without a value, which removes
/// them (`?pmin`, as Leshan and the ETS clients send it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttributeUpdate {
    /// Attributes given with a value.
    pub set: Attributes,
    /// Attributes given without a value.
    pub unset: BTreeSet<AttributeName>,
}

impl AttributeUpdate {
    /// Parses the Uri-Query options of a Write-Attributes request (`pmin=10`, `gt=5.5`,
    /// `pmax`). Unknown names, duplicates and bad values are errors, and the values set
    /// must be consistent among themselves ([`Attributes::validate`]).
    pub fn from_query<S: AsRef<str>>(query: &[S]) -> Result<Self, AttributeError> {
        let mut update = Self::default();
        let mut seen = BTreeSet::new();
        for item in query {
            let item = item.as_ref();
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (item, None),
            };
            let attr = AttributeName::from_name(name)
                .ok_or_else(|| AttributeError::Unknown { name: name.into() })?;
            if !seen.insert(attr) {
                return Err(AttributeError::Duplicate { name: name.into() });
            }
            match value {
                Some(v) => update.set.set_text(attr, v)?,
                None => {
                    update.unset.insert(attr);
                }
            }
        }
        update.set.validate()?;
        Ok(update)
    }

    /// The Uri-Query options for this update, set attributes first.
    pub fn to_query(&self) -> Vec<String> {
        let set = self.set.to_params().into_iter().map(|p| p.to_string());
        set.chain(self.unset.iter().map(|a| a.as_str().to_owned()))
            .collect()
    }

    /// The attributes after applying this update to `current`. The result is not
    /// validated: Core TS 1.1 §5.1.2 rejects only rule violations within one request
    /// (checked by [`AttributeUpdate::from_query`]); call [`Attributes::validate`] for a
    /// stricter policy.
    pub fn apply(&self, current: &Attributes) -> Attributes {
        let mut next = self.set.inherit(current);
        for a in &self.unset {
            next.clear(*a);
        }
        next
    }
}

// ---------------------------------------------------------------------------------------
// Discover

/// One link of a Discover or Bootstrap-Discover response (Core TS 1.1 §6.3, §6.1):
/// a path with its properties and notification attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverEntry {
    /// The object, instance, resource or resource instance (the root in Bootstrap-Discover).
    pub path: Lwm2mPath,
    /// `ver`: the object version (1.1, object links).
    pub ver: Option<String>,
    /// `dim`: the number of instances of a multiple resource.
    pub dim: Option<u16>,
    /// `ssid`: the Short Server ID of a Security or Server instance (Bootstrap-Discover).
    pub ssid: Option<u16>,
    /// `uri`: the server URI of a Security instance (Bootstrap-Discover, 1.1).
    pub uri: Option<String>,
    /// The notification attributes shown at this path.
    pub attributes: Attributes,
    /// Any other parameter, kept as given (e.g. `lwm2m="1.1"` on the root link).
    pub other: Vec<LinkParam>,
}

impl DiscoverEntry {
    /// An entry for `path` without properties or attributes.
    pub fn new(path: Lwm2mPath) -> Self {
        Self {
            path,
            ver: None,
            dim: None,
            ssid: None,
            uri: None,
            attributes: Attributes::default(),
            other: Vec::new(),
        }
    }

    /// The link: `<path>;ver;dim;ssid;uri;pmin;pmax;gt;lt;st;epmin;epmax;others`.
    pub fn to_link(&self) -> Link {
        let mut params = Vec::new();
        let mut push = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                params.push(LinkParam::new(name, v));
            }
        };
        push("ver", self.ver.clone());
        push("dim", self.dim.map(|d| d.to_string()));
        push("ssid", self.ssid.map(|s| s.to_string()));
        push("uri", self.uri.clone());
        params.extend(self.attributes.to_params());
        params.extend(self.other.iter().cloned());
        Link {
            target: self.path.to_string(),
            params,
        }
    }

    /// Reads an entry from a link: the target must be an LwM2M path; known parameters
    /// must have valid values and appear once.
    pub fn from_link(link: &Link) -> Result<Self, LinkError> {
        let path = link
            .target
            .parse::<Lwm2mPath>()
            .map_err(|e| LinkError::Target {
                target: link.target.clone(),
                reason: e.to_string(),
            })?;
        let mut entry = Self::new(path);
        let mut seen = BTreeSet::new();
        for p in &link.params {
            let name = p.name.to_ascii_lowercase();
            let known = matches!(name.as_str(), "ver" | "dim" | "ssid" | "uri")
                || AttributeName::from_name(&name).is_some();
            if !known {
                entry.other.push(p.clone());
                continue;
            }
            if !seen.insert(name.clone()) {
                return Err(AttributeError::Duplicate { name }.into());
            }
            let Some(value) = p.value.as_deref() else {
                return Err(AttributeError::MissingValue { name }.into());
            };
            let id = || {
                parse_uint::<u16>(value).ok_or_else(|| AttributeError::InvalidValue {
                    name: name.clone(),
                    value: value.into(),
                    reason: "expected an integer 0..=65535",
                })
            };
            match (name.as_str(), AttributeName::from_name(&name)) {
                ("ver", _) => entry.ver = Some(value.into()),
                ("dim", _) => entry.dim = Some(id()?),
                ("ssid", _) => entry.ssid = Some(id()?),
                ("uri", _) => entry.uri = Some(value.into()),
                (_, Some(attr)) => entry.attributes.set_text(attr, value)?,
                (_, None) => entry.other.push(p.clone()),
            }
        }
        Ok(entry)
    }
}

/// Formats a Discover response (Core TS 1.1 §6.3, "Discover"), e.g.
/// `</3/0>;pmin=10,</3/0/1>,</3/0/7>;dim=2;gt=50`.
pub fn discover_links(entries: &[DiscoverEntry]) -> String {
    let links: Vec<Link> = entries.iter().map(DiscoverEntry::to_link).collect();
    format_links(&links)
}

/// Parses a Discover or Bootstrap-Discover response into entries, in order.
pub fn parse_discover(s: &str) -> Result<Vec<DiscoverEntry>, LinkError> {
    parse_links(s)?
        .iter()
        .map(DiscoverEntry::from_link)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Registration

/// The link list of a Register or Update request (Core TS 1.0 §5.3.1, Core TS 1.1 §6.2.1),
/// e.g. `</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</3>;ver=1.1,</5>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegistrationLinks {
    /// The alternate path under which the objects sit: `/` unless a link with
    /// `rt="oma.lwm2m"` names another (e.g. `/lwm2m`); no trailing slash.
    pub alternate_path: String,
    /// The content formats from `ct` on the root link (1.1; `ct=110` or `ct="60 110"`).
    pub content_formats: Vec<u16>,
    /// The objects with their version (`ver`) and instances.
    pub objects: BTreeMap<ObjectId, ObjectLinkInfo>,
}

/// What a registration says about one object.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectLinkInfo {
    /// The object version from `ver` on the object link (1.1), e.g. `1.1`.
    pub version: Option<String>,
    /// The instances listed.
    pub instances: BTreeSet<InstanceId>,
}

impl Default for RegistrationLinks {
    fn default() -> Self {
        Self {
            alternate_path: "/".into(),
            content_formats: Vec::new(),
            objects: BTreeMap::new(),
        }
    }
}

/// Something odd in a registration link list; the link is skipped or the value ignored,
/// and the rest is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LinkNote {
    /// The link is not below the alternate path.
    OutsideAlternatePath {
        /// The target as written.
        target: String,
    },
    /// The link is not an object or object instance path.
    NotAnObjectLink {
        /// The target as written.
        target: String,
        /// Why.
        reason: String,
    },
    /// The object, instance, root link or version appears more than once.
    Duplicate {
        /// The target as written.
        target: String,
    },
    /// A `ct` value is not a content format number.
    BadContentFormat {
        /// The value as written.
        value: String,
    },
    /// The Security (0) or OSCORE (21) object is listed, which a Register or Update must
    /// not do.
    ForbiddenObject {
        /// The target as written.
        target: String,
    },
}

impl LinkNote {
    /// The clause of the specification the note is about.
    pub fn clause(&self) -> &'static str {
        match self {
            Self::OutsideAlternatePath { .. } => {
                "Core TS 1.1 §6.2.1: with an alternate path, every object link is below it"
            }
            Self::NotAnObjectLink { .. } | Self::Duplicate { .. } => {
                "Core TS 1.1 §6.2.1: the payload lists each object and object instance once"
            }
            Self::BadContentFormat { .. } => {
                "Core TS 1.1 §6.2.1: ct lists Content-Format numbers (RFC 7252 §12.3)"
            }
            Self::ForbiddenObject { .. } => {
                "Core TS 1.1 §6.2.1: the Security object (0) and OSCORE object (21) are not \
                 part of the registration's object list"
            }
        }
    }
}

impl fmt::Display for LinkNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutsideAlternatePath { target } => {
                write!(f, "<{target}> is outside the alternate path")
            }
            Self::NotAnObjectLink { target, reason } => {
                write!(f, "<{target}> is not an object or instance link: {reason}")
            }
            Self::Duplicate { target } => write!(f, "<{target}> appears more than once"),
            Self::BadContentFormat { value } => {
                write!(f, "ct value {value:?} is not a content format number")
            }
            Self::ForbiddenObject { target } => {
                write!(f, "<{target}>: the Security/OSCORE object is listed")
            }
        }
    }
}

/// A target without its trailing slashes; the root stays `/`.
fn normalize(target: &str) -> String {
    let t = target.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.into() }
}

impl RegistrationLinks {
    /// Parses a Register / Update payload; oddities become notes.
    pub fn parse(s: &str) -> Result<(Self, Vec<LinkNote>), LinkError> {
        Ok(Self::from_links(&parse_links(s)?))
    }

    /// Reads the registration view of parsed links.
    pub fn from_links(links: &[Link]) -> (Self, Vec<LinkNote>) {
        let mut notes = Vec::new();
        let is_lwm2m_root = |l: &Link| {
            l.value("rt")
                .is_some_and(|rt| rt.split_ascii_whitespace().any(|t| t == "oma.lwm2m"))
        };
        let mut reg = Self::default();
        if let Some(root) = links.iter().find(|l| is_lwm2m_root(l)) {
            reg.alternate_path = normalize(&root.target);
        }
        let mut root_seen = false;
        let mut object_links = BTreeSet::new();
        for link in links {
            let target = link.target.clone();
            if is_lwm2m_root(link) || normalize(&link.target) == reg.alternate_path {
                if root_seen {
                    notes.push(LinkNote::Duplicate { target });
                    continue;
                }
                root_seen = true;
                let ct = link.params.iter().filter(|p| p.name == "ct");
                for v in ct.filter_map(|p| p.value.as_deref()) {
                    for n in v.split_ascii_whitespace() {
                        match parse_uint::<u16>(n) {
                            Some(code) => reg.content_formats.push(code),
                            None => notes.push(LinkNote::BadContentFormat { value: n.into() }),
                        }
                    }
                }
                continue;
            }
            let relative = if reg.alternate_path == "/" {
                Some(link.target.as_str())
            } else {
                link.target
                    .strip_prefix(reg.alternate_path.as_str())
                    .filter(|r| r.starts_with('/'))
            };
            let Some(relative) = relative else {
                notes.push(LinkNote::OutsideAlternatePath { target });
                continue;
            };
            let parsed = relative.parse::<Lwm2mPath>();
            if parsed
                .as_ref()
                .is_ok_and(|p| matches!(p.object_id(), Some(ObjectId(0 | 21))))
            {
                notes.push(LinkNote::ForbiddenObject {
                    target: target.clone(),
                });
            }
            match parsed {
                Ok(Lwm2mPath::Object(o)) => {
                    let info = reg.objects.entry(o).or_default();
                    if !object_links.insert(o) {
                        notes.push(LinkNote::Duplicate { target });
                    } else if let Some(v) = link.value("ver") {
                        info.version = Some(v.into());
                    }
                }
                Ok(Lwm2mPath::Instance(o, i)) => {
                    if !reg.objects.entry(o).or_default().instances.insert(i) {
                        notes.push(LinkNote::Duplicate { target });
                    }
                }
                Ok(p) => notes.push(LinkNote::NotAnObjectLink {
                    target,
                    reason: format!("{p} is not an object or instance path"),
                }),
                Err(e) => notes.push(LinkNote::NotAnObjectLink {
                    target,
                    reason: e.to_string(),
                }),
            }
        }
        (reg, notes)
    }

    /// The links: the root link (`rt="oma.lwm2m"` with `ct`) when there is an alternate path
    /// or content formats, then per object an object link when it has a version or no
    /// instance, and its instance links.
    pub fn to_links(&self) -> Vec<Link> {
        let mut links = Vec::new();
        if self.alternate_path != "/" || !self.content_formats.is_empty() {
            let mut root = Link::new(self.alternate_path.clone());
            root.params.push(LinkParam::new("rt", "oma.lwm2m"));
            if !self.content_formats.is_empty() {
                let cts: Vec<String> = self.content_formats.iter().map(u16::to_string).collect();
                root.params.push(LinkParam::new("ct", cts.join(" ")));
            }
            links.push(root);
        }
        let prefix = if self.alternate_path == "/" {
            ""
        } else {
            self.alternate_path.as_str()
        };
        for (o, info) in &self.objects {
            if info.version.is_some() || info.instances.is_empty() {
                let mut link = Link::new(format!("{prefix}/{o}"));
                if let Some(v) = &info.version {
                    link.params.push(LinkParam::new("ver", v.clone()));
                }
                links.push(link);
            }
            for i in &info.instances {
                links.push(Link::new(format!("{prefix}/{o}/{i}")));
            }
        }
        links
    }
}

impl fmt::Display for RegistrationLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_links(&self.to_links()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn objects(entries: &[(u16, Option<&str>, &[u16])]) -> BTreeMap<ObjectId, ObjectLinkInfo> {
        entries
            .iter()
            .map(|(o, v, is)| {
                (
                    ObjectId(*o),
                    ObjectLinkInfo {
                        version: v.map(Into::into),
                        instances: is.iter().map(|i| InstanceId(*i)).collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn generic_syntax_with_quotes_and_escapes() {
        let s = r#"</a>;rt="x y";title="a, \"b\"; c\\";flag , </b/c>;ct=40"#;
        let links = parse_links(s).unwrap();
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].target, "/a");
        assert_eq!(links[0].value("rt"), Some("x y"));
        assert_eq!(links[0].value("title"), Some(r#"a, "b"; c\"#));
        assert_eq!(links[0].param("flag"), Some(&LinkParam::flag("flag")));
        assert_eq!(links[0].value("flag"), None);
        assert_eq!(links[1].value("CT"), Some("40"));
        let formatted = format_links(&links);
        assert_eq!(
            formatted,
            r#"</a>;rt="x y";title="a, \"b\"; c\\";flag,</b/c>;ct=40"#
        );
        assert_eq!(parse_links(&formatted).unwrap(), links);
        // Quotes exactly when needed.
        assert_eq!(LinkParam::new("ver", "1.1").to_string(), "ver=1.1");
        assert_eq!(
            LinkParam::new("rt", "oma.lwm2m").to_string(),
            r#"rt="oma.lwm2m""#
        );
        assert_eq!(LinkParam::new("x", "").to_string(), r#"x="""#);
        assert_eq!(LinkParam::new("x", "a b").to_string(), r#"x="a b""#);
        assert_eq!(LinkParam::new("x", "a;b").to_string(), r#"x="a;b""#);
        assert_eq!(LinkParam::new("x", "é").to_string(), r#"x="é""#);
        assert_eq!(parse_links("").unwrap(), vec![]);
        assert_eq!(parse_links(" \r\n ").unwrap(), vec![]);
        assert_eq!(parse_links("</>").unwrap(), vec![Link::new("/")]);
    }

    #[test]
    fn syntax_errors_carry_offsets() {
        let cases = [
            ("/1/0", 0, "expected '<'"),
            ("</1/0", 5, "unterminated '<'"),
            ("</1/0>,", 7, "expected '<'"),
            ("</1/0>;", 7, "parameter name"),
            ("</1/0>;=3", 7, "parameter name"),
            ("</1/0>;a=", 9, "value after"),
            ("</1/0>;a=\"xy", 9, "unterminated quoted"),
            ("</1/0>;a=\"x\\", 12, "backslash"),
            ("</1/0> </2>", 7, "expected ','"),
            ("</1/0>;a=b c", 11, "expected ','"),
            ("</1 /0>", 3, "invalid character"),
        ];
        for (s, offset, reason) in cases {
            match parse_links(s) {
                Err(LinkError::Syntax {
                    offset: o,
                    reason: r,
                }) => {
                    assert_eq!(o, offset, "{s:?}: {r}");
                    assert!(r.contains(reason), "{s:?}: {r}");
                }
                other => panic!("{s:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_link_payload(b"</1>;a=\"\xff\""),
            Err(LinkError::Syntax { offset: 8, .. })
        ));
    }

    /// Core TS 1.0 §5.3.1 Register example: `</1/0>,</1/1>,</2/0>,</2/1>,</2/2>,</2/3>,
    /// </2/4>,</3/0>,</4/0>,</5>`, and its alternate-path form under `/lwm2m`.
    #[test]
    fn registration_examples_of_1_0() {
        let s = "</1/0>,</1/1>,</2/0>,</2/1>,</2/2>,</2/3>,</2/4>,</3/0>,</4/0>,</5>";
        let (reg, notes) = RegistrationLinks::parse(s).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(reg.alternate_path, "/");
        assert!(reg.content_formats.is_empty());
        assert_eq!(
            reg.objects,
            objects(&[
                (1, None, &[0, 1]),
                (2, None, &[0, 1, 2, 3, 4]),
                (3, None, &[0]),
                (4, None, &[0]),
                (5, None, &[]),
            ])
        );
        assert_eq!(reg.to_string(), s);

        let alt = r#"</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3/0>,</lwm2m/5>"#;
        let (reg, notes) = RegistrationLinks::parse(alt).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(reg.alternate_path, "/lwm2m");
        assert_eq!(
            reg.objects,
            objects(&[(1, None, &[0]), (3, None, &[0]), (5, None, &[])])
        );
        assert_eq!(reg.to_string(), alt);
    }

    /// Core TS 1.1 §6.2.1: content formats on the root link and object versions, e.g.
    /// `</>;rt="oma.lwm2m";ct=11543, </1/0>, </3/0>, </3>;ver=1.1, </5>` and
    /// `</>;ct=110, </1/0>,</1/1>,…`; several formats as `ct="60 110"`.
    #[test]
    fn registration_examples_of_1_1() {
        let s = r#"</>;rt="oma.lwm2m";ct=11543, </1/0>, </3/0>, </3>;ver=1.1, </5>"#;
        let (reg, notes) = RegistrationLinks::parse(s).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(reg.alternate_path, "/");
        assert_eq!(reg.content_formats, vec![11543]);
        assert_eq!(
            reg.objects,
            objects(&[(1, None, &[0]), (3, Some("1.1"), &[0]), (5, None, &[])])
        );
        assert_eq!(
            reg.to_string(),
            r#"</>;rt="oma.lwm2m";ct=11543,</1/0>,</3>;ver=1.1,</3/0>,</5>"#
        );

        let (reg, notes) = RegistrationLinks::parse("</>;ct=110, </1/0>,</1/1>,</3/0>").unwrap();
        assert!(notes.is_empty());
        assert_eq!(reg.content_formats, vec![110]);

        let (reg, _) = RegistrationLinks::parse(r#"</>;ct="60 110";rt="oma.lwm2m""#).unwrap();
        assert_eq!(reg.content_formats, vec![60, 110]);
        assert_eq!(reg.to_string(), r#"</>;rt="oma.lwm2m";ct="60 110""#);
        // A 1.0 peer quoting the version.
        let (reg, _) = RegistrationLinks::parse(r#"</3>;ver="1.0",</3/0>"#).unwrap();
        assert_eq!(reg.objects[&ObjectId(3)].version.as_deref(), Some("1.0"));
    }

    #[test]
    fn a_listed_security_or_oscore_object_is_noted() {
        let (reg, notes) = RegistrationLinks::parse("</0/0>,</1/0>,</3/0>,</21>").unwrap();
        assert!(reg.objects.contains_key(&ObjectId(3)));
        assert_eq!(
            notes,
            [
                LinkNote::ForbiddenObject {
                    target: "/0/0".into()
                },
                LinkNote::ForbiddenObject {
                    target: "/21".into()
                }
            ]
        );
        assert!(notes[0].clause().contains("§6.2.1"));
    }

    #[test]
    fn registration_oddities_become_notes() {
        let s = r#"</lwm2m>;rt="oma.lwm2m";ct=x, </1/0>, </lwm2m/3/0>, </lwm2m/3/0>, </lwm2m/3/0/1>, </lwm2m/a>, </lwm2mx/4/0>, </lwm2m/>"#;
        let (reg, notes) = RegistrationLinks::parse(s).unwrap();
        assert_eq!(reg.objects, objects(&[(3, None, &[0])]));
        assert_eq!(
            notes,
            vec![
                LinkNote::BadContentFormat { value: "x".into() },
                LinkNote::OutsideAlternatePath {
                    target: "/1/0".into()
                },
                LinkNote::Duplicate {
                    target: "/lwm2m/3/0".into()
                },
                LinkNote::NotAnObjectLink {
                    target: "/lwm2m/3/0/1".into(),
                    reason: "/3/0/1 is not an object or instance path".into()
                },
                LinkNote::NotAnObjectLink {
                    target: "/lwm2m/a".into(),
                    reason: "path \"/a\": segment \"a\" is not an id in 0..=65534".into()
                },
                LinkNote::OutsideAlternatePath {
                    target: "/lwm2mx/4/0".into()
                },
                LinkNote::Duplicate {
                    target: "/lwm2m/".into()
                },
            ]
        );
        assert!(notes[0].to_string().contains("not a content format"));
    }

    /// Core TS 1.0 §5.4.2 / 1.1 §6.3 Discover examples: an object with attributes at the
    /// object level and `dim` on multiple resources, and single resources.
    #[test]
    fn discover_examples() {
        let s = "</3>;pmin=10,</3/0/1>,</3/0/2>,</3/0/3>,</3/0/4>,</3/0/6>;dim=8,\
                 </3/0/7>;dim=8;gt=50;lt=42.2,</3/0/8>;dim=8,</3/0/11>,</3/0/16>";
        let entries = parse_discover(s).unwrap();
        assert_eq!(entries.len(), 10);
        assert_eq!(entries[0].path, Lwm2mPath::object(3));
        assert_eq!(entries[0].attributes.pmin, Some(10));
        let r7 = &entries[6];
        assert_eq!(r7.path, Lwm2mPath::resource(3, 0, 7));
        assert_eq!(r7.dim, Some(8));
        assert_eq!(r7.attributes.gt, Some(50.0));
        assert_eq!(r7.attributes.lt, Some(42.2));
        assert_eq!(discover_links(&entries), s);

        // ETS int-260 step 6 (inherited attributes shown), in our parameter order.
        let s = "</3/0/7>;pmin=10;pmax=200;dim=2;lt=1;gt=6;st=1";
        let e = parse_discover(s).unwrap();
        assert_eq!(
            discover_links(&e),
            "</3/0/7>;dim=2;pmin=10;pmax=200;gt=6;lt=1;st=1"
        );
        assert_eq!(parse_discover(&discover_links(&e)).unwrap(), e);

        // The brief's shape, built from entries.
        let mut inst = DiscoverEntry::new(Lwm2mPath::instance(3, 0));
        inst.attributes.pmin = Some(10);
        let mut r7 = DiscoverEntry::new(Lwm2mPath::resource(3, 0, 7));
        r7.dim = Some(2);
        r7.attributes.gt = Some(50.0);
        let entries = [inst, DiscoverEntry::new(Lwm2mPath::resource(3, 0, 1)), r7];
        assert_eq!(
            discover_links(&entries),
            "</3/0>;pmin=10,</3/0/1>,</3/0/7>;dim=2;gt=50"
        );
        // Resource instances (1.1, ETS int-261).
        let s = "</3/0/11>;dim=1;pmin=10;pmax=320,</3/0/11/0>;pmax=100;epmin=1;epmax=20";
        let e = parse_discover(s).unwrap();
        assert_eq!(e[1].path, Lwm2mPath::resource_instance(3, 0, 11, 0));
        assert_eq!(e[1].attributes.epmax, Some(20));
        assert_eq!(discover_links(&e), s);
    }

    /// Core TS 1.1 §6.1 Bootstrap-Discover: the root link with `lwm2m`, `ssid` and
    /// `uri` on Security and Server instances.
    #[test]
    fn bootstrap_discover_example() {
        let s = r#"</>;lwm2m=1.1,</0/0>,</0/1>;ssid=101;uri="coaps://server_1.example.com",</1/0>;ssid=101,</3/0>"#;
        let e = parse_discover(s).unwrap();
        assert_eq!(e[0].path, Lwm2mPath::Root);
        assert_eq!(e[0].other, vec![LinkParam::new("lwm2m", "1.1")]);
        assert_eq!(e[2].ssid, Some(101));
        assert_eq!(e[2].uri.as_deref(), Some("coaps://server_1.example.com"));
        assert_eq!(discover_links(&e), s);
        // ETS quotes the version: accepted, written back quoted only if needed.
        let e = parse_discover(r#"</>;lwm2m="1.0""#).unwrap();
        assert_eq!(e[0].other, vec![LinkParam::new("lwm2m", "1.0")]);
    }

    #[test]
    fn discover_errors() {
        assert!(matches!(
            parse_discover("</3/x>"),
            Err(LinkError::Target { .. })
        ));
        for (s, want) in [
            ("</3>;pmin", "no value"),
            ("</3>;pmin=1;pmin=2", "twice"),
            ("</3>;pmin=-1", "pmin"),
            ("</3/0/6>;dim=70000", "dim"),
            ("</3>;gt=abc", "gt"),
            ("</3>;gt=inf", "gt"),
        ] {
            let err = parse_discover(s).unwrap_err();
            assert!(
                matches!(err, LinkError::Attribute(_)) && err.to_string().contains(want),
                "{s}: {err}"
            );
        }
    }

    /// Core TS 1.1 §6.3 Write-Attributes: `PUT /3/0/9?pmin=10&pmax=60&gt=50&lt=20.5&st=5`,
    /// and a name without a value removes the attribute (`PUT /3/0/9?pmin`).
    #[test]
    fn write_attributes_queries() {
        let u = AttributeUpdate::from_query(&["pmin=10", "pmax=60", "gt=50", "lt=20.5", "st=5"])
            .unwrap();
        assert_eq!(
            u.set,
            Attributes {
                pmin: Some(10),
                pmax: Some(60),
                gt: Some(50.0),
                lt: Some(20.5),
                st: Some(5.0),
                ..Attributes::default()
            }
        );
        assert_eq!(
            u.to_query(),
            vec!["pmin=10", "pmax=60", "gt=50", "lt=20.5", "st=5"]
        );
        assert_eq!(AttributeUpdate::from_query(&u.to_query()).unwrap(), u);

        let current = u.apply(&Attributes::default());
        let unset = AttributeUpdate::from_query(&["pmin", "epmin=1", "epmax=20"]).unwrap();
        assert_eq!(unset.unset, BTreeSet::from([AttributeName::Pmin]));
        let next = unset.apply(&current);
        assert_eq!(next.pmin, None);
        assert_eq!(next.pmax, Some(60));
        assert_eq!(next.epmax, Some(20));
        assert_eq!(unset.to_query(), vec!["epmin=1", "epmax=20", "pmin"]);
        // Changing lt alone is accepted; the merged set breaks the rule, which only a
        // stricter policy rejects.
        let lower = AttributeUpdate::from_query(&["lt=45"]).unwrap();
        assert!(matches!(
            lower.apply(&current).validate(),
            Err(AttributeError::Inconsistent { .. })
        ));
    }

    #[test]
    fn write_attributes_errors() {
        let cases: [(&[&str], &str); 9] = [
            (&["dim=3"], "not a writable"),
            (&["foo=1"], "not a writable"),
            (&["pmin=1", "pmin=2"], "twice"),
            (&["pmin=1.5"], "expected seconds"),
            (&["pmin=+1"], "expected seconds"),
            (&["gt=NaN"], "finite"),
            (&["gt=5", "lt=10"], "lt=10 must be below gt=5"),
            (
                &["gt=10", "lt=5", "st=3"],
                "lt + 2*st = 11 must be below gt=10",
            ),
            (&["st=-1"], "negative"),
        ];
        for (q, want) in cases {
            let err = AttributeUpdate::from_query(q).unwrap_err();
            assert!(err.to_string().contains(want), "{q:?}: {err}");
        }
        // pmax below pmin is accepted and then ignored (Core TS 1.1 §5.1.2).
        let u = AttributeUpdate::from_query(&["pmin=20", "pmax=10"]).unwrap();
        assert_eq!(u.set.effective_pmax(), None);
        let u = AttributeUpdate::from_query(&["pmin=20", "pmax=30"]).unwrap();
        assert_eq!(u.set.effective_pmax(), Some(30));
        // Equal periods and a step that just fits are valid.
        assert!(AttributeUpdate::from_query(&["pmin=5", "pmax=5", "lt=1", "gt=6", "st=2"]).is_ok());
    }

    #[test]
    fn inheritance_fills_unset_attributes() {
        let object = Attributes {
            pmin: Some(10),
            pmax: Some(200),
            ..Attributes::default()
        };
        let resource = Attributes {
            pmax: Some(100),
            gt: Some(6.0),
            ..Attributes::default()
        };
        let shown = resource.inherit(&object);
        assert_eq!(shown.pmin, Some(10));
        assert_eq!(shown.pmax, Some(100));
        assert_eq!(shown.gt, Some(6.0));
        assert!(Attributes::default().is_empty());
        assert!(!shown.is_empty());
    }

    fn value_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9.:/_-]{1,8}",
            ".{0,8}",
            Just(String::new()),
            "[\"\\\\,; ]{1,4}",
        ]
    }

    fn link() -> impl Strategy<Value = Link> {
        let param = ("[a-z][a-z0-9*]{0,5}", proptest::option::of(value_text()))
            .prop_map(|(name, value)| LinkParam { name, value });
        (
            "/[a-z0-9/._-]{0,10}",
            proptest::collection::vec(param, 0..4),
        )
            .prop_map(|(target, params)| Link { target, params })
    }

    fn attributes() -> impl Strategy<Value = Attributes> {
        let int = proptest::option::of(any::<u32>());
        let float = proptest::option::of(
            prop_oneof![any::<f64>(), (-1000i32..1000).prop_map(f64::from)]
                .prop_filter("finite", |f| f.is_finite()),
        );
        (
            int.clone(),
            int.clone(),
            float.clone(),
            float.clone(),
            float,
            int.clone(),
            int,
        )
            .prop_map(|(pmin, pmax, gt, lt, st, epmin, epmax)| Attributes {
                pmin,
                pmax,
                gt,
                lt,
                st,
                epmin,
                epmax,
            })
    }

    fn path() -> impl Strategy<Value = Lwm2mPath> {
        proptest::collection::vec(0u16..65535, 0..=4)
            .prop_map(|ids| Lwm2mPath::from_ids(&ids).unwrap_or(Lwm2mPath::Root))
    }

    proptest! {
        #[test]
        fn links_round_trip(links in proptest::collection::vec(link(), 0..5)) {
            prop_assert_eq!(parse_links(&format_links(&links)).unwrap(), links);
        }

        #[test]
        fn discover_round_trips(entries in proptest::collection::vec(
            (path(), attributes(), proptest::option::of(any::<u16>()), proptest::option::of("[0-9.]{1,4}"))
                .prop_map(|(p, a, dim, ver)| DiscoverEntry { ver, dim, attributes: a, ..DiscoverEntry::new(p) }),
            0..5,
        )) {
            prop_assert_eq!(parse_discover(&discover_links(&entries)).unwrap(), entries);
        }

        #[test]
        fn registration_round_trips(
            alt in prop_oneof![Just("/".to_owned()), "/[a-z]{1,6}"],
            cts in proptest::collection::vec(any::<u16>(), 0..3),
            objs in proptest::collection::btree_map(
                (0u16..65535).prop_map(ObjectId),
                (proptest::option::of("[0-9]\\.[0-9]"), proptest::collection::btree_set((0u16..65535).prop_map(InstanceId), 0..3))
                    .prop_map(|(version, instances)| ObjectLinkInfo { version, instances }),
                0..4,
            ),
        ) {
            let reg = RegistrationLinks { alternate_path: alt, content_formats: cts, objects: objs };
            let (back, notes) = RegistrationLinks::parse(&reg.to_string()).unwrap();
            prop_assert!(notes.is_empty(), "{:?}", notes);
            prop_assert_eq!(back, reg);
        }

        #[test]
        fn query_round_trips(set in attributes().prop_filter("valid", |a| a.validate().is_ok()),
                             unset in proptest::collection::btree_set(proptest::sample::select(AttributeName::ALL.to_vec()), 0..3)) {
            let mut set = set;
            for a in &unset {
                set.clear(*a);
            }
            let u = AttributeUpdate { set, unset };
            prop_assert_eq!(AttributeUpdate::from_query(&u.to_query()).unwrap(), u);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,40}", bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse_links(&s);
            let _ = parse_discover(&s);
            let _ = RegistrationLinks::parse(&s);
            let _ = parse_link_payload(&bytes);
            let _ = AttributeUpdate::from_query(&s.split('&').collect::<Vec<_>>());
        }

        #[test]
        fn mutated_links_never_panic(i in any::<prop::sample::Index>(), c in prop::sample::select(b"<>;,=\"\\ \x80x/0".to_vec()), cut in any::<prop::sample::Index>()) {
            let s = r#"</>;rt="oma.lwm2m";ct="60 110",</1/0>,</3>;ver=1.1,</3/0/7>;dim=2;gt=50;lt=4.5"#;
            let mut b = s.as_bytes().to_vec();
            let at = i.index(b.len());
            b[at] = c;
            b.truncate(cut.index(b.len() + 1));
            if let Ok(links) = parse_link_payload(&b) {
                let _ = RegistrationLinks::from_links(&links);
                let _ = links.iter().map(DiscoverEntry::from_link).count();
            }
        }
    }
}
