//! Resource values and data types (Core TS 1.1 Appendix C, "Data Types").

use std::fmt;
use std::str::FromStr;

/// The data type of a resource as the object registry declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// UTF-8 string.
    String,
    /// Signed integer, up to 64 bits.
    Integer,
    /// Unsigned integer, up to 64 bits (LwM2M 1.1).
    #[serde(rename = "unsigned")]
    UnsignedInteger,
    /// IEEE 754 float, 32 or 64 bits.
    Float,
    /// Boolean.
    Boolean,
    /// Opaque bytes.
    Opaque,
    /// Unix time in seconds, signed.
    Time,
    /// Object link `object:instance`.
    Objlnk,
    /// A CoRE link (LwM2M 1.1), carried as a string.
    Corelnk,
    /// No value: executable resources.
    None,
}

impl DataType {
    /// The name used in DDF files (`Unsigned Integer`, `Objlnk`, ...).
    pub fn ddf_name(self) -> &'static str {
        match self {
            Self::String => "String",
            Self::Integer => "Integer",
            Self::UnsignedInteger => "Unsigned Integer",
            Self::Float => "Float",
            Self::Boolean => "Boolean",
            Self::Opaque => "Opaque",
            Self::Time => "Time",
            Self::Objlnk => "Objlnk",
            Self::Corelnk => "Corelnk",
            Self::None => "none",
        }
    }

    /// Parses a DDF `<Type>` value, case-insensitively; an empty type means `None`
    /// (executable resources leave it empty).
    pub fn from_ddf_name(s: &str) -> Option<Self> {
        let lower = s.trim().to_ascii_lowercase();
        Some(match lower.as_str() {
            "string" => Self::String,
            "integer" => Self::Integer,
            "unsigned integer" | "unsignedinteger" | "unsigned" => Self::UnsignedInteger,
            "float" => Self::Float,
            "boolean" => Self::Boolean,
            "opaque" => Self::Opaque,
            "time" => Self::Time,
            "objlnk" => Self::Objlnk,
            "corelnk" => Self::Corelnk,
            "" | "none" => Self::None,
            _ => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ddf_name())
    }
}

/// An object link (Core TS 1.1 Appendix C): `65535:65535` is the null link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectLink {
    /// The linked object id.
    pub object: u16,
    /// The linked instance id.
    pub instance: u16,
}

impl ObjectLink {
    /// The null link `65535:65535`.
    pub const NULL: Self = Self {
        object: 65535,
        instance: 65535,
    };
}

impl fmt::Display for ObjectLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.object, self.instance)
    }
}

impl FromStr for ObjectLink {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let (o, i) = s
            .split_once(':')
            .ok_or_else(|| ValueError::ObjlnkShape { text: s.to_owned() })?;
        let parse = |x: &str| {
            x.parse::<u16>().map_err(|_| ValueError::ObjlnkId {
                text: s.to_owned(),
                part: x.to_owned(),
            })
        };
        Ok(Self {
            object: parse(o)?,
            instance: parse(i)?,
        })
    }
}

/// Why a written form (text/plain, JSON, `O:I`) is not a value of the wanted type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// The text/plain form (Core TS 1.1 §7.4.1) does not parse as the type.
    #[error("{text:?} is not a valid {ty}")]
    Text {
        /// The text.
        text: String,
        /// The wanted type.
        ty: DataType,
    },
    /// The JSON value does not fit the type.
    #[error("{json} is not a valid {ty} value")]
    Json {
        /// The JSON, as written.
        json: String,
        /// The wanted type.
        ty: DataType,
    },
    /// An object link without the `:` between object and instance.
    #[error("object link {text:?} is not OBJECT:INSTANCE")]
    ObjlnkShape {
        /// The text.
        text: String,
    },
    /// An object link part that is not a 16-bit id.
    #[error("object link {text:?}: {part:?} is not a 16-bit id")]
    ObjlnkId {
        /// The text.
        text: String,
        /// The part that is not an id.
        part: String,
    },
}

/// A typed resource value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// UTF-8 string.
    String(String),
    /// Signed integer.
    Integer(i64),
    /// Unsigned integer.
    UnsignedInteger(u64),
    /// Float.
    Float(f64),
    /// Boolean.
    Boolean(bool),
    /// Opaque bytes.
    Opaque(Vec<u8>),
    /// Unix time, seconds.
    Time(i64),
    /// Object link.
    Objlnk(ObjectLink),
    /// CoRE link text.
    Corelnk(String),
    /// No value (the empty payload of an executable resource).
    None,
}

impl Value {
    /// The data type this value has.
    pub fn data_type(&self) -> DataType {
        match self {
            Self::String(_) => DataType::String,
            Self::Integer(_) => DataType::Integer,
            Self::UnsignedInteger(_) => DataType::UnsignedInteger,
            Self::Float(_) => DataType::Float,
            Self::Boolean(_) => DataType::Boolean,
            Self::Opaque(_) => DataType::Opaque,
            Self::Time(_) => DataType::Time,
            Self::Objlnk(_) => DataType::Objlnk,
            Self::Corelnk(_) => DataType::Corelnk,
            Self::None => DataType::None,
        }
    }

    /// The value as a JSON value for people and for the REST API: strings, numbers,
    /// booleans; opaque as lowercase hex; object links as `"O:I"`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Self::String(s) | Self::Corelnk(s) => J::String(s.clone()),
            Self::Integer(i) | Self::Time(i) => J::from(*i),
            Self::UnsignedInteger(u) => J::from(*u),
            Self::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(f.to_string())),
            Self::Boolean(b) => J::Bool(*b),
            Self::Opaque(b) => J::String(b.iter().map(|x| format!("{x:02x}")).collect()),
            Self::Objlnk(l) => J::String(l.to_string()),
            Self::None => J::Null,
        }
    }

    /// Builds a value of type `ty` from JSON as [`Value::to_json`] writes it.
    pub fn from_json(ty: DataType, j: &serde_json::Value) -> Result<Self, ValueError> {
        use serde_json::Value as J;
        let bad = || ValueError::Json {
            json: j.to_string(),
            ty,
        };
        Ok(match (ty, j) {
            (DataType::String, J::String(s)) => Self::String(s.clone()),
            (DataType::Corelnk, J::String(s)) => Self::Corelnk(s.clone()),
            (DataType::Integer, J::Number(n)) => Self::Integer(n.as_i64().ok_or_else(bad)?),
            (DataType::Time, J::Number(n)) => Self::Time(n.as_i64().ok_or_else(bad)?),
            (DataType::UnsignedInteger, J::Number(n)) => {
                Self::UnsignedInteger(n.as_u64().ok_or_else(bad)?)
            }
            (DataType::Float, J::Number(n)) => Self::Float(n.as_f64().ok_or_else(bad)?),
            (DataType::Boolean, J::Bool(b)) => Self::Boolean(*b),
            (DataType::Opaque, J::String(s)) => Self::Opaque(parse_hex(s).ok_or_else(bad)?),
            (DataType::Objlnk, J::String(s)) => Self::Objlnk(s.parse()?),
            (DataType::None, J::Null) => Self::None,
            _ => return Err(bad()),
        })
    }
}

/// Parses lowercase or uppercase hex without separators.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_every_type() {
        let values = [
            Value::String("héllo".into()),
            Value::Integer(-5),
            Value::UnsignedInteger(u64::MAX),
            Value::Float(1.5),
            Value::Boolean(true),
            Value::Opaque(vec![0, 0xff, 0x10]),
            Value::Time(1_700_000_000),
            Value::Objlnk(ObjectLink {
                object: 3,
                instance: 0,
            }),
            Value::Corelnk("</3/0>".into()),
            Value::None,
        ];
        for v in values {
            let back = Value::from_json(v.data_type(), &v.to_json()).unwrap();
            assert_eq!(back, v);
        }
        assert!(Value::from_json(DataType::Integer, &serde_json::json!("x")).is_err());
        assert!(Value::from_json(DataType::Objlnk, &serde_json::json!("3")).is_err());
        let msg = |ty, j| Value::from_json(ty, &j).unwrap_err().to_string();
        assert_eq!(
            msg(DataType::Integer, serde_json::json!("x")),
            "\"x\" is not a valid Integer value"
        );
        assert_eq!(
            msg(DataType::Objlnk, serde_json::json!("3")),
            "object link \"3\" is not OBJECT:INSTANCE"
        );
        assert_eq!(
            msg(DataType::Objlnk, serde_json::json!("3:x")),
            "object link \"3:x\": \"x\" is not a 16-bit id"
        );
    }

    #[test]
    fn ddf_type_names() {
        for t in [
            DataType::String,
            DataType::Integer,
            DataType::UnsignedInteger,
            DataType::Float,
            DataType::Boolean,
            DataType::Opaque,
            DataType::Time,
            DataType::Objlnk,
            DataType::Corelnk,
            DataType::None,
        ] {
            assert_eq!(DataType::from_ddf_name(t.ddf_name()), Some(t));
        }
        assert_eq!(DataType::from_ddf_name("bogus"), None);
    }
}
