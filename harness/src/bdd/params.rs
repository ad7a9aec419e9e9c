//! Cucumber parameter types of the step vocabulary: `{path}` (`/3/0/1`), `{paths}`
//! (`/1/0/1, /3/0/11/0`), `{format}` (`TLV`, `SenML CBOR`, `plain text`...), `{code}`
//! (`2.05`), `{duration}` (`30s`, `500ms`, `2m`), `{version}` (`1.1`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use cucumber::Parameter;
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::{ContentFormat, Lwm2mPath};

/// An LwM2M path: `/`, `/3`, `/3/0`, `/3/0/1`, `/3/0/11/0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "path", regex = r"/[0-9/]*")]
pub struct PathParam(pub Lwm2mPath);

impl FromStr for PathParam {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<Lwm2mPath>()
            .map(Self)
            .map_err(|e| format!("{s:?} is not an LwM2M path: {e}"))
    }
}

/// A comma-separated list of paths: `/1/0/1, /3/0/11/0`.
#[derive(Debug, Clone, PartialEq, Eq, Parameter)]
#[param(name = "paths", regex = r"/[0-9/]*(?:,\s*/[0-9/]*)*")]
pub struct Paths(pub Vec<Lwm2mPath>);

impl FromStr for Paths {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(|p| p.trim().parse::<PathParam>().map(|p| p.0))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// A content format by the name people use: `plain text`, `opaque`, `CBOR`, `TLV`,
/// `JSON` (OMA JSON 11543), `SenML JSON`, `SenML CBOR`, `LwM2M CBOR`, `link format`, the
/// pre-1.0 numbers `TLV 1542` and `JSON 1543`, or any Content-Format number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(
    name = "format",
    regex = r"plain text|opaque|SenML JSON|SenML CBOR|LwM2M CBOR|CBOR|TLV 1542|TLV|JSON 1543|JSON|link format|[0-9]+"
)]
pub struct FormatParam(pub ContentFormat);

impl FromStr for FormatParam {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let format = match s {
            "plain text" => ContentFormat::Text,
            "opaque" => ContentFormat::Opaque,
            "CBOR" => ContentFormat::Cbor,
            "TLV" => ContentFormat::Tlv,
            "TLV 1542" => ContentFormat::LegacyTlv,
            "JSON" => ContentFormat::OmaJson,
            "JSON 1543" => ContentFormat::LegacyJson,
            "SenML JSON" => ContentFormat::SenmlJson,
            "SenML CBOR" => ContentFormat::SenmlCbor,
            "LwM2M CBOR" => ContentFormat::Lwm2mCbor,
            "link format" => ContentFormat::LinkFormat,
            n => n
                .parse::<u16>()
                .ok()
                .and_then(ContentFormat::from_code)
                .ok_or_else(|| format!("{s:?} is not a content format LwM2M uses"))?,
        };
        Ok(Self(format))
    }
}

/// The name [`FormatParam`] reads, for messages.
pub fn format_label(f: ContentFormat) -> String {
    match f {
        ContentFormat::Text => "plain text".to_owned(),
        ContentFormat::Tlv => "TLV".to_owned(),
        ContentFormat::OmaJson => "JSON".to_owned(),
        ContentFormat::SenmlJson => "SenML JSON".to_owned(),
        ContentFormat::SenmlCbor => "SenML CBOR".to_owned(),
        ContentFormat::Lwm2mCbor => "LwM2M CBOR".to_owned(),
        ContentFormat::Cbor => "CBOR".to_owned(),
        f => format!("{} ({})", f.name(), f.code()),
    }
}

/// A CoAP response code `c.dd` (RFC 7252 §5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "code", regex = r"[0-9]\.[0-9]{2}")]
pub struct Code(pub (u8, u8));

impl FromStr for Code {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a CoAP code c.dd");
        let (class, detail) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self((
            class.parse().map_err(|_| bad())?,
            detail.parse().map_err(|_| bad())?,
        )))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0.0, self.0.1)
    }
}

/// A duration: `30s`, `500ms`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "duration", regex = r"[0-9]+(?:ms|s|m|h)")]
pub struct DurationParam(pub Duration);

impl FromStr for DurationParam {
    type Err = lwm2m_simulator::duration::DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        lwm2m_simulator::duration::parse(s).map(Self)
    }
}

/// An LwM2M enabler version: `1.0`, `1.1`, `1.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Parameter)]
#[param(name = "version", regex = r"1\.[0-2]")]
pub struct Version(pub Lwm2mVersion);

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lwm2mVersion::parse(s)
            .map(Self)
            .ok_or_else(|| format!("{s:?} is not an LwM2M version"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse() {
        assert_eq!(
            "/3/0/11/0".parse::<PathParam>().unwrap().0,
            Lwm2mPath::resource_instance(3, 0, 11, 0)
        );
        assert_eq!(
            "/1/0/1, /3".parse::<Paths>().unwrap().0,
            vec![Lwm2mPath::resource(1, 0, 1), Lwm2mPath::object(3)]
        );
        assert_eq!(
            "SenML CBOR".parse::<FormatParam>().unwrap().0,
            ContentFormat::SenmlCbor
        );
        assert_eq!(
            "11542".parse::<FormatParam>().unwrap().0,
            ContentFormat::Tlv
        );
        assert!("XML".parse::<FormatParam>().is_err());
        assert_eq!("2.05".parse::<Code>().unwrap().to_string(), "2.05");
        assert_eq!(
            "1500ms".parse::<DurationParam>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!("1.1".parse::<Version>().unwrap().0, Lwm2mVersion::V1_1);
        assert!("/x".parse::<PathParam>().is_err());
    }
}
