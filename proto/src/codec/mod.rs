//! The content codecs, one module per format, and what they share: the [`ContentFormat`]
//! numbers, the [`CodecError`] and [`Finding`] every codec reports, and the registry-typed
//! value helpers. The codecs depend on this module only; [`crate::content`] dispatches to
//! them and is the entry point to use.

use std::fmt;

use crate::ids::Lwm2mPath;
use crate::model::{ResourceDef, Schema};
use crate::node::ShapeError;
use crate::value::{DataType, ObjectLink, Value, ValueError};

pub mod link;
pub mod lwm2m_cbor;
pub mod oma_json;
pub mod senml;
pub mod senml_cbor;
pub mod senml_json;
pub mod text;
pub mod tlv;

/// A CoAP Content-Format used by LwM2M.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentFormat {
    /// `text/plain` (0).
    Text,
    /// `application/link-format` (40).
    LinkFormat,
    /// `application/octet-stream` (42).
    Opaque,
    /// `application/cbor` (60): a single resource value (LwM2M 1.1).
    Cbor,
    /// `application/senml+json` (110).
    SenmlJson,
    /// `application/senml+cbor` (112).
    SenmlCbor,
    /// `application/vnd.oma.lwm2m+tlv` (11542).
    Tlv,
    /// `application/vnd.oma.lwm2m+json` (11543, LwM2M 1.0).
    OmaJson,
    /// `application/vnd.oma.lwm2m+cbor` (11544, LwM2M 1.2).
    Lwm2mCbor,
    /// Pre-1.0 text number 1541 (`application/vnd.oma.lwm2m+text` of the 2014-2016 drafts).
    LegacyText,
    /// Pre-1.0 TLV number 1542.
    LegacyTlv,
    /// Pre-1.0 JSON number 1543.
    LegacyJson,
    /// Pre-1.0 opaque number 1544.
    LegacyOpaque,
}

impl ContentFormat {
    /// Every format, for listings and tests.
    pub const ALL: [Self; 13] = [
        Self::Text,
        Self::LinkFormat,
        Self::Opaque,
        Self::Cbor,
        Self::SenmlJson,
        Self::SenmlCbor,
        Self::Tlv,
        Self::OmaJson,
        Self::Lwm2mCbor,
        Self::LegacyText,
        Self::LegacyTlv,
        Self::LegacyJson,
        Self::LegacyOpaque,
    ];

    /// The CoAP Content-Format number.
    pub fn code(self) -> u16 {
        match self {
            Self::Text => 0,
            Self::LinkFormat => 40,
            Self::Opaque => 42,
            Self::Cbor => 60,
            Self::SenmlJson => 110,
            Self::SenmlCbor => 112,
            Self::Tlv => 11542,
            Self::OmaJson => 11543,
            Self::Lwm2mCbor => 11544,
            Self::LegacyText => 1541,
            Self::LegacyTlv => 1542,
            Self::LegacyJson => 1543,
            Self::LegacyOpaque => 1544,
        }
    }

    /// The format for a Content-Format number, if LwM2M uses it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }

    /// A short name for command lines and reports (`tlv`, `senml-json`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::LinkFormat => "link",
            Self::Opaque => "opaque",
            Self::Cbor => "cbor",
            Self::SenmlJson => "senml-json",
            Self::SenmlCbor => "senml-cbor",
            Self::Tlv => "tlv",
            Self::OmaJson => "json",
            Self::Lwm2mCbor => "lwm2m-cbor",
            Self::LegacyText => "text-1541",
            Self::LegacyTlv => "tlv-1542",
            Self::LegacyJson => "json-1543",
            Self::LegacyOpaque => "opaque-1544",
        }
    }

    /// The format for a short name or a decimal Content-Format number.
    pub fn from_name(s: &str) -> Option<Self> {
        if let Ok(n) = s.parse::<u16>() {
            return Self::from_code(n);
        }
        Self::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The current format a legacy number stands for (1541 → text, 1542 → TLV, 1543 → OMA
    /// JSON, 1544 → opaque).
    pub fn canonical(self) -> Self {
        match self {
            Self::LegacyText => Self::Text,
            Self::LegacyTlv => Self::Tlv,
            Self::LegacyJson => Self::OmaJson,
            Self::LegacyOpaque => Self::Opaque,
            f => f,
        }
    }

    /// True for the pre-1.0 numbers.
    pub fn is_legacy(self) -> bool {
        self != self.canonical()
    }

    /// True if the format can carry several resources (an instance or an object).
    pub fn is_multi_node(self) -> bool {
        matches!(
            self.canonical(),
            Self::Tlv | Self::OmaJson | Self::SenmlJson | Self::SenmlCbor | Self::Lwm2mCbor
        )
    }
}

impl fmt::Display for ContentFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// Something a decoder noticed that the peer got wrong, or that the registry does not
/// know; the decoded content is still returned.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Finding {
    /// The resource is not in the schema; its value was decoded as the format allows.
    UnknownResource {
        /// Where.
        path: Lwm2mPath,
    },
    /// The value does not fit the registry's type; it is kept as the format carried it.
    TypeMismatch {
        /// Where.
        path: Lwm2mPath,
        /// The registry's type.
        expected: DataType,
        /// What was found instead, in words.
        found: String,
    },
    /// A TLV integer was longer than the shortest encoding (Core TS 1.1 §7.4.3.1).
    NonMinimalInteger {
        /// Where.
        path: Lwm2mPath,
        /// The length used.
        length: usize,
    },
    /// A resource came as single where the registry declares it multiple, or the other
    /// way round (TLV says which by its type bits, Core TS 1.1 §7.4.3); the value is kept
    /// as the payload shaped it.
    MultiplicityMismatch {
        /// The resource.
        path: Lwm2mPath,
        /// True if the registry declares a multiple resource.
        expected_multiple: bool,
    },
    /// A pre-1.0 Content-Format number (1541-1544) was used.
    LegacyContentFormat {
        /// The number.
        code: u16,
    },
    /// Resource instance TLVs at a resource path without the Multiple Resource TLV that
    /// should hold them (accepted as the multiple resource).
    UnwrappedResourceInstances {
        /// The resource.
        path: Lwm2mPath,
    },
    /// A text/plain number, boolean, object link or base64 value with white space around
    /// it (accepted without it).
    PaddedText {
        /// Where.
        path: Lwm2mPath,
    },
    /// A SenML JSON `vd` with base64 padding (`=`), which RFC 8428 leaves out (accepted).
    PaddedBase64 {
        /// Where.
        path: Lwm2mPath,
    },
}

impl Finding {
    /// The clause of the specification the finding is about: what the peer should have
    /// sent, or why the registry's view applies.
    pub fn clause(&self) -> &'static str {
        match self {
            Self::NonMinimalInteger { .. } => {
                "Core TS 1.1 §7.4.3.1: integers in 1, 2, 4 or 8 bytes, the shortest that fits"
            }
            Self::MultiplicityMismatch { .. } => {
                "Core TS 1.1 §7.4.3: the TLV type bits follow the object definition"
            }
            Self::TypeMismatch { .. } => {
                "Core TS 1.1 Appendix C: the value's type is the object definition's"
            }
            Self::UnknownResource { .. } => {
                "Core TS 1.1 §7.3: the object definition lists the resources"
            }
            Self::LegacyContentFormat { .. } => {
                "Core TS 1.0 §6.4: the registered Content-Format numbers replaced 1541-1544"
            }
            Self::UnwrappedResourceInstances { .. } => {
                "Core TS 1.1 §7.4.3: a multiple resource is one Multiple Resource TLV (type \
                 bits 10) holding its Resource Instance TLVs"
            }
            Self::PaddedText { .. } => {
                "Core TS 1.1 §7.4.1 and Appendix C: the plain text value is the ASCII form of \
                 the value alone"
            }
            Self::PaddedBase64 { .. } => {
                "RFC 8428 §5: vd is base64url with padding omitted (Core TS 1.1 §7.4.4)"
            }
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownResource { path } => write!(f, "{path}: resource not in the registry"),
            Self::TypeMismatch {
                path,
                expected,
                found,
            } => write!(f, "{path}: registry type is {expected}, found {found}"),
            Self::NonMinimalInteger { path, length } => {
                write!(
                    f,
                    "{path}: integer in {length} bytes is not minimally encoded"
                )
            }
            Self::MultiplicityMismatch {
                path,
                expected_multiple,
            } => {
                let (want, got) = if *expected_multiple {
                    ("multiple", "single")
                } else {
                    ("single", "multiple")
                };
                write!(
                    f,
                    "{path}: registry declares a {want} resource, payload carried a {got} one"
                )
            }
            Self::LegacyContentFormat { code } => {
                write!(f, "pre-1.0 content format {code} used")
            }
            Self::UnwrappedResourceInstances { path } => write!(
                f,
                "{path}: resource instance TLVs without the Multiple Resource TLV around them"
            ),
            Self::PaddedText { path } => {
                write!(f, "{path}: white space around the plain text value")
            }
            Self::PaddedBase64 { path } => write!(f, "{path}: vd carries base64 padding"),
        }
    }
}

/// Decoded content with what the decoder noticed.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    /// The content.
    pub content: T,
    /// Deviations and unknowns, in the order met.
    pub findings: Vec<Finding>,
}

/// Why a payload cannot be decoded or a node cannot be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not valid in the format.
    #[error("{format}: malformed at byte {offset}: {reason}")]
    Malformed {
        /// Format name.
        format: &'static str,
        /// Byte offset where the problem was found.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A value cannot be represented or parsed.
    #[error("{path}: invalid value: {reason}")]
    InvalidValue {
        /// Where.
        path: Lwm2mPath,
        /// What is wrong.
        reason: String,
    },
    /// The decoded entries do not form a node at the target.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The format cannot carry this content (e.g. an object in text/plain).
    #[error("{format} cannot carry {what}")]
    Unsupported {
        /// Format.
        format: ContentFormat,
        /// What was asked.
        what: String,
    },
}

impl CodecError {
    /// Shorthand for [`CodecError::Malformed`].
    pub fn malformed(format: &'static str, offset: usize, reason: impl Into<String>) -> Self {
        Self::Malformed {
            format,
            offset,
            reason: reason.into(),
        }
    }
}

/// The definition of the resource a path points into, if the schema has it.
pub fn resource_def<'a>(schema: &'a dyn Schema, path: &Lwm2mPath) -> Option<&'a ResourceDef> {
    schema.resource(path.object_id()?, path.resource_id()?)
}

/// The registry type of the resource at `path`, recording an [`Finding::UnknownResource`]
/// when the schema does not know it.
pub fn expected_type(
    schema: &dyn Schema,
    path: &Lwm2mPath,
    findings: &mut Vec<Finding>,
) -> Option<DataType> {
    let ty = resource_def(schema, path).map(|d| d.data_type);
    if ty.is_none() {
        findings.push(Finding::UnknownResource { path: *path });
    }
    ty
}

/// A number as a format carried it, before typing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// A negative or small integer.
    Int(i64),
    /// An integer above `i64::MAX`.
    Uint(u64),
    /// A float.
    Float(f64),
}

/// Types a number found at `path` by the registry: integer, unsigned, float or time. A
/// number where the registry wants a string/boolean/opaque/objlnk is kept as a number
/// (integer or float) and flagged.
pub fn typed_number(
    schema: &dyn Schema,
    path: &Lwm2mPath,
    n: Number,
    findings: &mut Vec<Finding>,
) -> Value {
    let fallback = |n: Number| match n {
        Number::Int(i) => Value::Integer(i),
        Number::Uint(u) => Value::UnsignedInteger(u),
        Number::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::Integer(f as i64),
        Number::Float(f) => Value::Float(f),
    };
    let Some(ty) = expected_type(schema, path, findings) else {
        return fallback(n);
    };
    let mismatch = |findings: &mut Vec<Finding>, found: String| {
        findings.push(Finding::TypeMismatch {
            path: *path,
            expected: ty,
            found,
        })
    };
    match (ty, n) {
        (DataType::Float, Number::Int(i)) => Value::Float(i as f64),
        (DataType::Float, Number::Uint(u)) => Value::Float(u as f64),
        (DataType::Float, Number::Float(f)) => Value::Float(f),
        (DataType::Integer | DataType::Time, n) => {
            let i = match n {
                Number::Int(i) => Some(i),
                Number::Uint(u) => i64::try_from(u).ok(),
                Number::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(f as i64),
                Number::Float(_) => None,
            };
            match (i, ty) {
                (Some(i), DataType::Time) => Value::Time(i),
                (Some(i), _) => Value::Integer(i),
                (None, _) => {
                    mismatch(findings, format!("the number {n:?}"));
                    fallback(n)
                }
            }
        }
        (DataType::UnsignedInteger, n) => {
            let u = match n {
                Number::Int(i) => u64::try_from(i).ok(),
                Number::Uint(u) => Some(u),
                Number::Float(f) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => {
                    Some(f as u64)
                }
                Number::Float(_) => None,
            };
            match u {
                Some(u) => Value::UnsignedInteger(u),
                None => {
                    mismatch(findings, format!("the number {n:?}"));
                    fallback(n)
                }
            }
        }
        (_, n) => {
            mismatch(findings, format!("a number ({n:?})"));
            fallback(n)
        }
    }
}

/// Types a string found at `path` (SenML `vs`, OMA JSON `sv`): a String or Corelnk as the
/// registry says; anything else keeps the string and is flagged (the pre-1.0 Location
/// quirk sends latitude as a string where 1.0 wants a float).
pub fn typed_string(
    schema: &dyn Schema,
    path: &Lwm2mPath,
    s: String,
    findings: &mut Vec<Finding>,
) -> Value {
    match expected_type(schema, path, findings) {
        None | Some(DataType::String) => Value::String(s),
        Some(DataType::Corelnk) => Value::Corelnk(s),
        Some(ty) => {
            findings.push(Finding::TypeMismatch {
                path: *path,
                expected: ty,
                found: format!("the string {s:?}"),
            });
            Value::String(s)
        }
    }
}

/// Checks a format-typed value (boolean, opaque, objlnk) against the registry and flags a
/// mismatch; the value is returned as decoded.
pub fn checked_value(
    schema: &dyn Schema,
    path: &Lwm2mPath,
    v: Value,
    findings: &mut Vec<Finding>,
) -> Value {
    if let Some(ty) = expected_type(schema, path, findings)
        && ty != v.data_type()
    {
        findings.push(Finding::TypeMismatch {
            path: *path,
            expected: ty,
            found: format!("a {} value", v.data_type()),
        });
    }
    v
}

/// Parses the text/plain representation of a value of type `ty` (Core TS 1.1 §7.4.1):
/// decimal integers and floats, booleans `0`/`1`, opaque in base64, time as decimal
/// seconds, object links as `O:I`.
pub fn parse_text(ty: DataType, s: &str) -> Result<Value, ValueError> {
    use base64::Engine as _;
    let bad = || ValueError::Text {
        text: s.to_owned(),
        ty,
    };
    Ok(match ty {
        DataType::String => Value::String(s.to_owned()),
        DataType::Corelnk => Value::Corelnk(s.to_owned()),
        DataType::Integer => Value::Integer(s.trim().parse().map_err(|_| bad())?),
        DataType::Time => Value::Time(s.trim().parse().map_err(|_| bad())?),
        DataType::UnsignedInteger => Value::UnsignedInteger(s.trim().parse().map_err(|_| bad())?),
        DataType::Float => {
            let f: f64 = s.trim().parse().map_err(|_| bad())?;
            if !f.is_finite() {
                return Err(bad());
            }
            Value::Float(f)
        }
        DataType::Boolean => match s.trim() {
            "0" => Value::Boolean(false),
            "1" => Value::Boolean(true),
            _ => return Err(bad()),
        },
        DataType::Opaque => Value::Opaque(
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| bad())?,
        ),
        DataType::Objlnk => Value::Objlnk(s.trim().parse::<ObjectLink>()?),
        DataType::None => {
            if s.is_empty() {
                Value::None
            } else {
                return Err(bad());
            }
        }
    })
}

/// The text/plain representation of a value (inverse of [`parse_text`]).
pub fn format_text(v: &Value) -> String {
    use base64::Engine as _;
    match v {
        Value::String(s) | Value::Corelnk(s) => s.clone(),
        Value::Integer(i) | Value::Time(i) => i.to_string(),
        Value::UnsignedInteger(u) => u.to_string(),
        Value::Float(f) => format_float(*f),
        Value::Boolean(b) => if *b { "1" } else { "0" }.to_owned(),
        Value::Opaque(b) => base64::engine::general_purpose::STANDARD.encode(b),
        Value::Objlnk(l) => l.to_string(),
        Value::None => String::new(),
    }
}

/// Formats a float so that it parses back to the same value and always reads as a float
/// (`1.0`, not `1`).
pub fn format_float(f: f64) -> String {
    let s = format!("{f:?}");
    if s.contains(['.', 'e', 'E', 'n', 'i']) {
        s
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_numbers_and_names() {
        for f in ContentFormat::ALL {
            assert_eq!(ContentFormat::from_code(f.code()), Some(f));
            assert_eq!(ContentFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(
            ContentFormat::from_code(1542).unwrap().canonical(),
            ContentFormat::Tlv
        );
        assert_eq!(ContentFormat::from_name("11542"), Some(ContentFormat::Tlv));
        assert_eq!(ContentFormat::from_code(7), None);
    }

    #[test]
    fn text_values_round_trip() {
        let cases = [
            (DataType::Integer, "-42"),
            (DataType::Float, "3.5"),
            (DataType::Boolean, "1"),
            (DataType::Opaque, "AAEC"),
            (DataType::Objlnk, "3:0"),
            (DataType::Time, "1700000000"),
            (DataType::String, "héllo"),
            (DataType::UnsignedInteger, "18446744073709551615"),
        ];
        for (ty, s) in cases {
            let v = parse_text(ty, s).unwrap();
            assert_eq!(format_text(&v), s, "{ty}");
        }
        assert!(parse_text(DataType::Boolean, "true").is_err());
        assert!(parse_text(DataType::Float, "NaN").is_err());
        assert_eq!(
            parse_text(DataType::Boolean, "true")
                .unwrap_err()
                .to_string(),
            "\"true\" is not a valid Boolean"
        );
        assert_eq!(format_float(2.0), "2.0");
    }
}
