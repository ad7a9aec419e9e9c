//! Identifiers and paths of the LwM2M object model (Core TS 1.1 §6.1, §7.1).
//!
//! An LwM2M path addresses the root, an object, an object instance, a resource or a
//! resource instance: `/`, `/3`, `/3/0`, `/3/0/1`, `/3/0/11/0`. Every identifier is a
//! 16-bit unsigned integer; `65535` (`MAX_ID`) is reserved and never a valid id in a path
//! (Core TS 1.1 §7.1: "ID 65535 is reserved").

use std::fmt;
use std::str::FromStr;

/// The reserved identifier value, never valid inside a path.
pub const MAX_ID: u16 = 65535;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u16);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u16> for $name {
            fn from(v: u16) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// An object identifier (for example 3 for Device).
    ObjectId
);
id_type!(
    /// An object instance identifier.
    InstanceId
);
id_type!(
    /// A resource identifier within an object.
    ResourceId
);
id_type!(
    /// A resource instance identifier within a multiple-instance resource.
    ResourceInstanceId
);

/// A path into the LwM2M object tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lwm2mPath {
    /// `/`: the whole client.
    Root,
    /// `/O`
    Object(ObjectId),
    /// `/O/I`
    Instance(ObjectId, InstanceId),
    /// `/O/I/R`
    Resource(ObjectId, InstanceId, ResourceId),
    /// `/O/I/R/RI`
    ResourceInstance(ObjectId, InstanceId, ResourceId, ResourceInstanceId),
}

/// Why a string is not an LwM2M path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("path {path:?} must start with '/'")]
    NoLeadingSlash {
        /// The rejected input.
        path: String,
    },
    /// A segment is empty (`//` or a trailing `/` after an id).
    #[error("path {path:?} has an empty segment at position {position}")]
    EmptySegment {
        /// The rejected input.
        path: String,
        /// 1-based segment position.
        position: usize,
    },
    /// A segment is not a decimal number in 0..=65534.
    #[error("path {path:?}: segment {segment:?} is not an id in 0..=65534")]
    BadSegment {
        /// The rejected input.
        path: String,
        /// The offending segment.
        segment: String,
    },
    /// More than four levels.
    #[error("path {path:?} has more than 4 levels (object/instance/resource/resource-instance)")]
    TooDeep {
        /// The rejected input.
        path: String,
    },
}

impl Lwm2mPath {
    /// Builds a path from up to four ids; `None` if more than four or one is 65535.
    pub fn from_ids(ids: &[u16]) -> Option<Self> {
        if ids.contains(&MAX_ID) {
            return None;
        }
        Some(match *ids {
            [] => Self::Root,
            [o] => Self::Object(ObjectId(o)),
            [o, i] => Self::Instance(ObjectId(o), InstanceId(i)),
            [o, i, r] => Self::Resource(ObjectId(o), InstanceId(i), ResourceId(r)),
            [o, i, r, ri] => Self::ResourceInstance(
                ObjectId(o),
                InstanceId(i),
                ResourceId(r),
                ResourceInstanceId(ri),
            ),
            _ => return None,
        })
    }

    /// `/O`
    pub fn object(o: u16) -> Self {
        Self::Object(ObjectId(o))
    }
    /// `/O/I`
    pub fn instance(o: u16, i: u16) -> Self {
        Self::Instance(ObjectId(o), InstanceId(i))
    }
    /// `/O/I/R`
    pub fn resource(o: u16, i: u16, r: u16) -> Self {
        Self::Resource(ObjectId(o), InstanceId(i), ResourceId(r))
    }
    /// `/O/I/R/RI`
    pub fn resource_instance(o: u16, i: u16, r: u16, ri: u16) -> Self {
        Self::ResourceInstance(
            ObjectId(o),
            InstanceId(i),
            ResourceId(r),
            ResourceInstanceId(ri),
        )
    }

    /// The ids of the path, outermost first (0 to 4 of them).
    pub fn ids(&self) -> Vec<u16> {
        match *self {
            Self::Root => vec![],
            Self::Object(o) => vec![o.0],
            Self::Instance(o, i) => vec![o.0, i.0],
            Self::Resource(o, i, r) => vec![o.0, i.0, r.0],
            Self::ResourceInstance(o, i, r, ri) => vec![o.0, i.0, r.0, ri.0],
        }
    }

    /// Number of levels: 0 for the root, 4 for a resource instance.
    pub fn depth(&self) -> usize {
        match self {
            Self::Root => 0,
            Self::Object(..) => 1,
            Self::Instance(..) => 2,
            Self::Resource(..) => 3,
            Self::ResourceInstance(..) => 4,
        }
    }

    /// The object id, if the path goes that deep.
    pub fn object_id(&self) -> Option<ObjectId> {
        match *self {
            Self::Root => None,
            Self::Object(o)
            | Self::Instance(o, _)
            | Self::Resource(o, _, _)
            | Self::ResourceInstance(o, _, _, _) => Some(o),
        }
    }

    /// The instance id, if the path goes that deep.
    pub fn instance_id(&self) -> Option<InstanceId> {
        match *self {
            Self::Instance(_, i) | Self::Resource(_, i, _) | Self::ResourceInstance(_, i, _, _) => {
                Some(i)
            }
            _ => None,
        }
    }

    /// The resource id, if the path goes that deep.
    pub fn resource_id(&self) -> Option<ResourceId> {
        match *self {
            Self::Resource(_, _, r) | Self::ResourceInstance(_, _, r, _) => Some(r),
            _ => None,
        }
    }

    /// The resource instance id, if the path addresses one.
    pub fn resource_instance_id(&self) -> Option<ResourceInstanceId> {
        match *self {
            Self::ResourceInstance(_, _, _, ri) => Some(ri),
            _ => None,
        }
    }

    /// The enclosing path (`None` for the root).
    pub fn parent(&self) -> Option<Self> {
        let ids = self.ids();
        if ids.is_empty() {
            None
        } else {
            Self::from_ids(&ids[..ids.len() - 1])
        }
    }

    /// A path one level deeper; `None` below a resource instance or for id 65535.
    pub fn child(&self, id: u16) -> Option<Self> {
        let mut ids = self.ids();
        ids.push(id);
        Self::from_ids(&ids)
    }

    /// True if `self` is `other` or an ancestor of it.
    pub fn is_prefix_of(&self, other: &Self) -> bool {
        let (a, b) = (self.ids(), other.ids());
        a.len() <= b.len() && a[..] == b[..a.len()]
    }

    /// The URI path segments as CoAP Uri-Path options carry them.
    pub fn segments(&self) -> Vec<String> {
        self.ids().iter().map(u16::to_string).collect()
    }

    /// Parses the segments of a CoAP Uri-Path (no slashes); empty means the root.
    pub fn from_segments<S: AsRef<str>>(segments: &[S]) -> Result<Self, PathError> {
        let joined = segments
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join("/");
        format!("/{joined}").parse()
    }
}

impl fmt::Display for Lwm2mPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = self.ids();
        if ids.is_empty() {
            return f.write_str("/");
        }
        for id in ids {
            write!(f, "/{id}")?;
        }
        Ok(())
    }
}

impl FromStr for Lwm2mPath {
    type Err = PathError;

    /// Parses `/`, `/3`, `/3/0`, `/3/0/1` or `/3/0/11/0`. A single trailing slash after
    /// the last id is tolerated (`/3/0/`), as several clients send it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let path = s.to_owned();
        let Some(rest) = s.strip_prefix('/') else {
            return Err(PathError::NoLeadingSlash { path });
        };
        let rest = match rest.strip_suffix('/') {
            Some(r) if !r.is_empty() && !r.ends_with('/') => r,
            _ => rest,
        };
        if rest.is_empty() {
            return Ok(Self::Root);
        }
        let mut ids = Vec::with_capacity(4);
        for (n, seg) in rest.split('/').enumerate() {
            if seg.is_empty() {
                return Err(PathError::EmptySegment {
                    path,
                    position: n + 1,
                });
            }
            if ids.len() == 4 {
                return Err(PathError::TooDeep { path });
            }
            let valid = seg.len() <= 5 && seg.bytes().all(|b| b.is_ascii_digit());
            match seg.parse::<u16>() {
                Ok(v) if valid && v != MAX_ID => ids.push(v),
                _ => {
                    return Err(PathError::BadSegment {
                        path,
                        segment: seg.to_owned(),
                    });
                }
            }
        }
        Self::from_ids(&ids).ok_or(PathError::TooDeep { path })
    }
}

impl serde::Serialize for Lwm2mPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lwm2mPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_level() {
        assert_eq!("/".parse::<Lwm2mPath>(), Ok(Lwm2mPath::Root));
        assert_eq!("/3".parse(), Ok(Lwm2mPath::object(3)));
        assert_eq!("/3/0".parse(), Ok(Lwm2mPath::instance(3, 0)));
        assert_eq!("/3/0/1".parse(), Ok(Lwm2mPath::resource(3, 0, 1)));
        assert_eq!(
            "/3/0/11/2".parse(),
            Ok(Lwm2mPath::resource_instance(3, 0, 11, 2))
        );
        assert_eq!("/3/0/".parse(), Ok(Lwm2mPath::instance(3, 0)));
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in [
            "3/0",
            "",
            "//",
            "/3//1",
            "/a",
            "/-1",
            "/65535",
            "/65536",
            "/1/2/3/4/5",
            "/+3",
            "/3 ",
            "/000003x",
        ] {
            assert!(bad.parse::<Lwm2mPath>().is_err(), "{bad:?} accepted");
        }
        let err = "/3/x".parse::<Lwm2mPath>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "path \"/3/x\": segment \"x\" is not an id in 0..=65534"
        );
    }

    #[test]
    fn display_round_trips_and_relations() {
        let p = Lwm2mPath::resource_instance(3, 0, 11, 2);
        assert_eq!(p.to_string(), "/3/0/11/2");
        assert_eq!(p.to_string().parse::<Lwm2mPath>(), Ok(p));
        assert_eq!(p.parent(), Some(Lwm2mPath::resource(3, 0, 11)));
        assert!(Lwm2mPath::object(3).is_prefix_of(&p));
        assert!(!Lwm2mPath::object(4).is_prefix_of(&p));
        assert!(Lwm2mPath::Root.is_prefix_of(&p));
        assert_eq!(p.child(1), None);
        assert_eq!(Lwm2mPath::Root.parent(), None);
        assert_eq!(
            Lwm2mPath::from_segments(&["3", "0"]),
            Ok(Lwm2mPath::instance(3, 0))
        );
    }
}
