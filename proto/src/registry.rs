//! The object registry: object definitions loaded from OMA DDF XML files (schema
//! `LWM2M.xsd`), keyed by object id and object version, and the [`Schema`] views that content
//! codecs use to type values.
//!
//! An object can be loaded at several versions (Core TS 1.1 §7.2, "Object Versioning": a
//! version is `MAJOR.MINOR`, and a client declares a version other than 1.0 with `ver=` on
//! its object links in Register, Core TS 1.1 §6.2.1). The *default* version of an object is
//! its highest numbered version; [`Registry::with_versions`] resolves the versions one client
//! declared instead.
//!
//! An `ObjectVersion` that is not `MAJOR.MINOR` names a *variant*: a definition that real
//! devices use but no published version matches, e.g. `pre-1.0`, the Location object of the
//! April 2016 LwM2M 1.0 candidate (coordinates as strings, resource 3 "Uncertainty"). A
//! variant is loaded like any version but is never the default while a numbered version of
//! its object is loaded; quirk packs select it by name with [`Registry::with_variant`].
//!
//! [`Registry::embedded`] holds the definitions shipped in `proto/ddf/` (objects 0 to 7 and 9,
//! IPSO 3303, 3304 and 3311, at 1.0 and at 1.1 where 1.1 differs);
//! [`Registry::load_documents`] adds a user's DDF documents (the caller reads the files).
//! Loading never overwrites: a second definition of the same object id and version is an
//! error naming both files. Errors name the file and line.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};

use crate::ids::{MAX_ID, ObjectId, ResourceId};
use crate::model::{ObjectDef, Operations, ResourceDef, Schema};
use crate::value::DataType;

/// The DDF files shipped with the crate (`proto/ddf/`), by file name.
const EMBEDDED: &[(&str, &str)] = &[
    ("0-1_0.xml", include_str!("../ddf/0-1_0.xml")),
    ("0-1_1.xml", include_str!("../ddf/0-1_1.xml")),
    ("1-1_0.xml", include_str!("../ddf/1-1_0.xml")),
    ("1-1_1.xml", include_str!("../ddf/1-1_1.xml")),
    ("2-1_0.xml", include_str!("../ddf/2-1_0.xml")),
    ("3-1_0.xml", include_str!("../ddf/3-1_0.xml")),
    ("3-1_1.xml", include_str!("../ddf/3-1_1.xml")),
    ("4-1_0.xml", include_str!("../ddf/4-1_0.xml")),
    ("4-1_1.xml", include_str!("../ddf/4-1_1.xml")),
    ("5-1_0.xml", include_str!("../ddf/5-1_0.xml")),
    ("5-1_1.xml", include_str!("../ddf/5-1_1.xml")),
    ("6-1_0.xml", include_str!("../ddf/6-1_0.xml")),
    ("6-pre1_0.xml", include_str!("../ddf/6-pre1_0.xml")),
    ("7-1_0.xml", include_str!("../ddf/7-1_0.xml")),
    ("9-1_0.xml", include_str!("../ddf/9-1_0.xml")),
    ("3303-1_0.xml", include_str!("../ddf/3303-1_0.xml")),
    ("3304-1_0.xml", include_str!("../ddf/3304-1_0.xml")),
    ("3311-1_0.xml", include_str!("../ddf/3311-1_0.xml")),
];

/// The deepest element nesting accepted (a DDF file nests five deep).
const MAX_DEPTH: usize = 16;

/// Why a DDF file or folder could not be loaded. `file` is the name the file was loaded
/// under, `line` is 1-based.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The file is not well-formed XML.
    #[error("{file}:{line}: XML syntax error: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// Where the parser stopped.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A required element or attribute is absent (LWM2M.xsd).
    #[error("{file}:{line}: <{parent}> has no {missing}")]
    Missing {
        /// The file.
        file: String,
        /// The line of the parent element.
        line: usize,
        /// The element that lacks it, e.g. `Item`.
        parent: String,
        /// What is absent, e.g. `<Type>` or `attribute ID`.
        missing: String,
    },
    /// An element has a value or a place LWM2M.xsd does not allow.
    #[error("{file}:{line}: <{element}>: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// The line of the element.
        line: usize,
        /// The element, e.g. `ObjectID`.
        element: String,
        /// What is wrong, quoting the value.
        reason: String,
    },
    /// One object defines a resource id twice.
    #[error(
        "{file}:{line}: object {object} defines resource {resource} twice (first at line {first_line})"
    )]
    DuplicateResource {
        /// The file.
        file: String,
        /// The line of the second definition.
        line: usize,
        /// The object.
        object: ObjectId,
        /// The resource id.
        resource: ResourceId,
        /// The line of the first definition.
        first_line: usize,
    },
    /// The object id and version are already loaded (from `first_file`).
    #[error("{file}:{line}: object {object} version {version} is already loaded from {first_file}")]
    DuplicateObject {
        /// The file of the second definition.
        file: String,
        /// The line of its `<Object>`.
        line: usize,
        /// The object.
        object: ObjectId,
        /// The object version.
        version: String,
        /// The file the first definition came from.
        first_file: String,
    },
}

/// Something worth knowing about a successful load, e.g. two versions of one object written
/// for different LwM2M enabler versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadNote {
    /// The file the note is about.
    pub file: String,
    /// The object the note is about.
    pub object: ObjectId,
    /// The note.
    pub message: String,
}

impl fmt::Display for LoadNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: object {}: {}", self.file, self.object, self.message)
    }
}

/// What [`Registry::load_documents`] loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The object ids and versions loaded, in load order.
    pub loaded: Vec<(ObjectId, String)>,
    /// Notes, e.g. version clashes.
    pub notes: Vec<LoadNote>,
}

/// One loaded definition and the file it came from.
#[derive(Debug, Clone)]
struct Loaded {
    def: ObjectDef,
    file: String,
}

/// The object definitions known to a server or a client, keyed by (object id, object
/// version). See the [module documentation](self) for default versions and variants.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    objects: BTreeMap<ObjectId, BTreeMap<String, Loaded>>,
}

impl Registry {
    /// A registry with no definitions.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The definitions shipped with the crate (`proto/ddf/`). The pre-1.0 Location variant
    /// is loaded but object 6 defaults to 1.0.
    ///
    /// # Panics
    ///
    /// Never in a released build: the shipped files are loaded by this crate's tests.
    pub fn embedded() -> Self {
        let mut registry = Self::empty();
        let files = EMBEDDED.iter().map(|(name, xml)| parse_ddf(name, xml));
        let parsed: Result<Vec<_>, _> = files.collect();
        if let Err(e) = parsed.and_then(|batch| registry.insert_batch(batch)) {
            panic!("shipped DDF file does not load: {e}");
        }
        registry
    }

    /// Loads the objects of one DDF document; `file` names it in errors. On error nothing
    /// is loaded.
    pub fn load_xml(&mut self, file: &str, xml: &str) -> Result<Vec<ObjectId>, RegistryError> {
        let batch = vec![parse_ddf(file, xml)?];
        let report = self.insert_batch(batch)?;
        Ok(report.loaded.into_iter().map(|(id, _)| id).collect())
    }

    /// Loads a batch of DDF documents, each `(file, xml)` with `file` naming it in errors
    /// and notes, in the order given. On error nothing of the batch is loaded. Reading
    /// files is the caller's: the command line loads a user's folder in file name order.
    pub fn load_documents<'a>(
        &mut self,
        documents: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<LoadReport, RegistryError> {
        let batch = documents
            .into_iter()
            .map(|(file, xml)| parse_ddf(file, xml))
            .collect::<Result<Vec<_>, _>>()?;
        self.insert_batch(batch)
    }

    /// The default definition of an object: its highest numbered version, or its highest
    /// variant when only variants are loaded.
    pub fn object(&self, id: ObjectId) -> Option<&ObjectDef> {
        self.objects
            .get(&id)?
            .values()
            .max_by(|a, b| version_order(&a.def.version, &b.def.version))
            .map(|loaded| &loaded.def)
    }

    /// The definition of an object at exactly this version (or variant name).
    pub fn object_version(&self, id: ObjectId, version: &str) -> Option<&ObjectDef> {
        Some(&self.objects.get(&id)?.get(version)?.def)
    }

    /// The default definition of every loaded object, by object id.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectDef> {
        self.objects.keys().filter_map(|&id| self.object(id))
    }

    /// The loaded versions of an object: numbered versions from lowest to highest, then
    /// variants by name.
    pub fn versions(&self, id: ObjectId) -> Vec<&str> {
        let mut versions: Vec<&str> = self
            .objects
            .get(&id)
            .map(|v| v.keys().map(String::as_str).collect())
            .unwrap_or_default();
        versions.sort_by(|a, b| version_order(a, b));
        versions
    }

    /// The file an object version was loaded from.
    pub fn source(&self, id: ObjectId, version: &str) -> Option<&str> {
        Some(&self.objects.get(&id)?.get(version)?.file)
    }

    /// A schema using the object versions a client declared at registration (`ver=` on its
    /// object links, Core TS 1.1 §6.2.1); other objects use their default version. A
    /// declared version that is not loaded falls back to the highest loaded version with the
    /// same major number below it (minor versions only add to an object, Core TS 1.1 §7.2),
    /// else to the default.
    /// The view borrows `declared` (a schema per request costs no copy of it).
    pub fn with_versions<'a>(&'a self, declared: &'a BTreeMap<ObjectId, String>) -> SchemaView<'a> {
        SchemaView {
            registry: self,
            chosen: Cow::Borrowed(declared),
        }
    }

    /// A schema using `version` (typically a variant name such as `pre-1.0`) for object
    /// `id` and default versions for the others.
    pub fn with_variant(&self, id: ObjectId, version: &str) -> SchemaView<'_> {
        SchemaView {
            registry: self,
            chosen: Cow::Owned(BTreeMap::new()),
        }
        .with_variant(id, version)
    }

    /// The definition of `id` for a client that declared `version`.
    fn resolve(&self, id: ObjectId, version: &str) -> Option<&ObjectDef> {
        let versions = self.objects.get(&id)?;
        if let Some(loaded) = versions.get(version) {
            return Some(&loaded.def);
        }
        let fallback = numbered(version).and_then(|(major, minor)| {
            versions
                .values()
                .filter(|l| numbered(&l.def.version).is_some_and(|(a, b)| a == major && b < minor))
                .max_by(|a, b| version_order(&a.def.version, &b.def.version))
        });
        match fallback {
            Some(loaded) => Some(&loaded.def),
            None => self.object(id),
        }
    }

    /// Adds parsed files, all or nothing: any (object, version) already loaded or repeated
    /// within the batch is an error. The report lists no files.
    fn insert_batch(&mut self, batch: Vec<ParsedFile>) -> Result<LoadReport, RegistryError> {
        let mut seen: BTreeMap<(ObjectId, &str), &str> = BTreeMap::new();
        for parsed in &batch {
            for (def, line) in &parsed.objects {
                let key = (def.id, def.version.as_str());
                let first = self
                    .source(def.id, &def.version)
                    .or_else(|| seen.get(&key).copied());
                if let Some(first_file) = first {
                    return Err(RegistryError::DuplicateObject {
                        file: parsed.file.clone(),
                        line: *line,
                        object: def.id,
                        version: def.version.clone(),
                        first_file: first_file.to_owned(),
                    });
                }
                seen.insert(key, &parsed.file);
            }
        }
        let mut report = LoadReport::default();
        for parsed in batch {
            for (def, _) in parsed.objects {
                let versions = self.objects.entry(def.id).or_default();
                for other in versions.values() {
                    if other.def.lwm2m_version != def.lwm2m_version {
                        report.notes.push(LoadNote {
                            file: parsed.file.clone(),
                            object: def.id,
                            message: format!(
                                "version {} (LwM2M {}) loaded beside version {} (LwM2M {}) from {}",
                                def.version,
                                def.lwm2m_version,
                                other.def.version,
                                other.def.lwm2m_version,
                                other.file
                            ),
                        });
                    }
                }
                report.loaded.push((def.id, def.version.clone()));
                let file = parsed.file.clone();
                versions.insert(def.version.clone(), Loaded { def, file });
            }
        }
        Ok(report)
    }
}

impl Schema for Registry {
    /// Types with the default version of each object.
    fn resource(&self, object: ObjectId, resource: ResourceId) -> Option<&ResourceDef> {
        self.object(object)?.resource(resource)
    }
}

/// A [`Schema`] over a [`Registry`] with chosen object versions: what one client declared
/// at registration, plus variants a quirk pack selects. Made by [`Registry::with_versions`]
/// and [`Registry::with_variant`].
#[derive(Debug, Clone)]
pub struct SchemaView<'r> {
    registry: &'r Registry,
    chosen: Cow<'r, BTreeMap<ObjectId, String>>,
}

impl<'r> SchemaView<'r> {
    /// Uses `version` (a version or a variant name such as `pre-1.0`) for object `id`.
    pub fn with_variant(mut self, id: ObjectId, version: &str) -> Self {
        self.chosen.to_mut().insert(id, version.to_owned());
        self
    }

    /// The definition of an object in this view.
    pub fn object(&self, id: ObjectId) -> Option<&'r ObjectDef> {
        match self.chosen.get(&id) {
            Some(version) => self.registry.resolve(id, version),
            None => self.registry.object(id),
        }
    }
}

impl Schema for SchemaView<'_> {
    fn resource(&self, object: ObjectId, resource: ResourceId) -> Option<&ResourceDef> {
        self.object(object)?.resource(resource)
    }
}

/// `MAJOR.MINOR` as numbers, or `None` for a variant name.
fn numbered(version: &str) -> Option<(u32, u32)> {
    let (major, minor) = version.split_once('.')?;
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok()
    };
    Some((number(major)?, number(minor)?))
}

/// Variants sort before numbered versions (so the maximum is the highest numbered version);
/// numbered versions by number, variants by name.
fn version_order(a: &str, b: &str) -> Ordering {
    match (numbered(a), numbered(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => a.cmp(b),
    }
}

/// The objects of one parsed file, each with the line of its `<Object>`.
struct ParsedFile {
    file: String,
    objects: Vec<(ObjectDef, usize)>,
}

/// Parses one DDF document (LWM2M.xsd: `<LWM2M>` holding one or more `<Object>`).
fn parse_ddf(file: &str, xml: &str) -> Result<ParsedFile, RegistryError> {
    let doc = Doc { file, xml };
    let root = doc.tree()?;
    if root.name != "LWM2M" {
        return Err(doc.invalid(&root, "the root element must be <LWM2M>".into()));
    }
    let objects = root
        .children
        .iter()
        .filter(|c| c.name == "Object")
        .map(|el| Ok((doc.object(el)?, doc.line(el.offset))))
        .collect::<Result<Vec<_>, RegistryError>>()?;
    if objects.is_empty() {
        return Err(doc.missing(&root, "<Object>"));
    }
    Ok(ParsedFile {
        file: file.to_owned(),
        objects,
    })
}

/// A reader position as a byte offset.
fn position(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

/// An element of the document tree, with the byte offset of its start tag.
#[derive(Debug)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    text: String,
    children: Vec<Element>,
    offset: usize,
}

impl Element {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// One document being parsed, for error positions.
struct Doc<'a> {
    file: &'a str,
    xml: &'a str,
}

impl Doc<'_> {
    /// The 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.xml.len());
        self.xml.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn syntax(&self, offset: usize, message: String) -> RegistryError {
        RegistryError::Syntax {
            file: self.file.to_owned(),
            line: self.line(offset),
            message,
        }
    }

    fn missing(&self, parent: &Element, missing: &str) -> RegistryError {
        RegistryError::Missing {
            file: self.file.to_owned(),
            line: self.line(parent.offset),
            parent: parent.name.clone(),
            missing: missing.to_owned(),
        }
    }

    fn invalid(&self, element: &Element, reason: String) -> RegistryError {
        RegistryError::Invalid {
            file: self.file.to_owned(),
            line: self.line(element.offset),
            element: element.name.clone(),
            reason,
        }
    }

    /// Reads the whole document into a tree of elements.
    fn tree(&self) -> Result<Element, RegistryError> {
        let mut reader = Reader::from_str(self.xml);
        let mut stack: Vec<Element> = Vec::new();
        let mut root: Option<Element> = None;
        loop {
            let offset = position(reader.buffer_position());
            let event = reader
                .read_event()
                .map_err(|e| self.syntax(position(reader.error_position()), e.to_string()))?;
            let finished = match event {
                Event::Start(start) => {
                    if stack.len() >= MAX_DEPTH {
                        let message = format!("elements nest deeper than {MAX_DEPTH} levels");
                        return Err(self.syntax(offset, message));
                    }
                    stack.push(self.open(&start, offset)?);
                    None
                }
                Event::Empty(start) => Some(self.open(&start, offset)?),
                Event::End(_) => match stack.pop() {
                    Some(element) => Some(element),
                    None => return Err(self.syntax(offset, "unmatched end tag".into())),
                },
                Event::Text(text) => {
                    self.push_text(&mut stack, offset, &text.xml10_content())?;
                    None
                }
                Event::CData(data) => {
                    self.push_text(&mut stack, offset, &data.xml10_content())?;
                    None
                }
                Event::GeneralRef(reference) => {
                    let resolved = match reference.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => match resolve_predefined_entity(&reference) {
                            Some(s) => s.to_owned(),
                            None => {
                                let message = format!("unknown entity &{};", &*reference);
                                return Err(self.syntax(offset, message));
                            }
                        },
                        Err(e) => return Err(self.syntax(offset, e.to_string())),
                    };
                    self.push_text(&mut stack, offset, &resolved)?;
                    None
                }
                Event::Eof => break,
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => None,
            };
            if let Some(element) = finished {
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(element);
                } else if root.is_none() {
                    root = Some(element);
                } else {
                    let message = "a second root element".to_owned();
                    return Err(self.syntax(element.offset, message));
                }
            }
        }
        if let Some(open) = stack.last() {
            let message = format!(
                "unexpected end of file: <{}> of line {} is not closed",
                open.name,
                self.line(open.offset)
            );
            return Err(self.syntax(self.xml.len(), message));
        }
        root.ok_or_else(|| self.syntax(0, "no root element".into()))
    }

    fn open(&self, start: &BytesStart<'_>, offset: usize) -> Result<Element, RegistryError> {
        let mut attributes = Vec::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| self.syntax(offset, e.to_string()))?;
            let value = attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| self.syntax(offset, e.to_string()))?;
            attributes.push((attribute.key.as_ref().to_owned(), value.into_owned()));
        }
        Ok(Element {
            name: start.name().as_ref().to_owned(),
            attributes,
            text: String::new(),
            children: Vec::new(),
            offset,
        })
    }

    fn push_text(
        &self,
        stack: &mut [Element],
        offset: usize,
        text: &str,
    ) -> Result<(), RegistryError> {
        match stack.last_mut() {
            Some(element) => element.text.push_str(text),
            None if text.trim().is_empty() => {}
            None => return Err(self.syntax(offset, "text outside the root element".into())),
        }
        Ok(())
    }

    /// The only child named `name`, if any; a second one is an error.
    fn child<'e>(
        &self,
        parent: &'e Element,
        name: &str,
    ) -> Result<Option<&'e Element>, RegistryError> {
        let mut found = parent.children.iter().filter(|c| c.name == name);
        let first = found.next();
        if let (Some(first), Some(second)) = (first, found.next()) {
            let reason = format!(
                "appears twice in <{}> (first at line {})",
                parent.name,
                self.line(first.offset)
            );
            return Err(self.invalid(second, reason));
        }
        Ok(first)
    }

    /// The trimmed text of the child `name`, which must be present.
    fn required<'e>(
        &self,
        parent: &'e Element,
        name: &str,
    ) -> Result<(&'e Element, &'e str), RegistryError> {
        match self.child(parent, name)? {
            Some(element) => Ok((element, element.text.trim())),
            None => Err(self.missing(parent, &format!("<{name}>"))),
        }
    }

    /// The trimmed text of the child `name`, or `default` when absent or empty.
    fn optional(
        &self,
        parent: &Element,
        name: &str,
        default: &str,
    ) -> Result<String, RegistryError> {
        let text = self.child(parent, name)?.map_or("", |e| e.text.trim());
        Ok(if text.is_empty() { default } else { text }.to_owned())
    }

    /// A non-empty name.
    fn name(&self, parent: &Element) -> Result<String, RegistryError> {
        let (element, name) = self.required(parent, "Name")?;
        if name.is_empty() {
            return Err(self.invalid(element, "is empty".into()));
        }
        Ok(name.to_owned())
    }

    /// `<MultipleInstances>`: `Multiple` is true, `Single` false.
    fn multiple(&self, parent: &Element) -> Result<bool, RegistryError> {
        let (element, text) = self.required(parent, "MultipleInstances")?;
        self.choice(element, text, "Multiple", "Single")
    }

    /// `<Mandatory>`: `Mandatory` is true, `Optional` false.
    fn mandatory(&self, parent: &Element) -> Result<bool, RegistryError> {
        let (element, text) = self.required(parent, "Mandatory")?;
        self.choice(element, text, "Mandatory", "Optional")
    }

    fn choice(
        &self,
        element: &Element,
        text: &str,
        yes: &str,
        no: &str,
    ) -> Result<bool, RegistryError> {
        if text.eq_ignore_ascii_case(yes) {
            Ok(true)
        } else if text.eq_ignore_ascii_case(no) {
            Ok(false)
        } else {
            Err(self.invalid(element, format!("{text:?} is neither {yes} nor {no}")))
        }
    }

    /// An object or resource id: 0 to 65534 (65535 is reserved, Core TS 1.1 §7.1).
    fn id(&self, element: &Element, text: &str, what: &str) -> Result<u16, RegistryError> {
        match text.parse::<u16>() {
            Ok(id) if id != MAX_ID => Ok(id),
            _ => Err(self.invalid(element, format!("{text:?} is not {what} id (0 to 65534)"))),
        }
    }

    /// One `<Object>`.
    fn object(&self, el: &Element) -> Result<ObjectDef, RegistryError> {
        let name = self.name(el)?;
        let (id_el, id_text) = self.required(el, "ObjectID")?;
        let id = ObjectId(self.id(id_el, id_text, "an object")?);
        let version = self.optional(el, "ObjectVersion", "1.0")?;
        if version.contains(char::is_whitespace) {
            let element = self.child(el, "ObjectVersion")?.unwrap_or(el);
            return Err(self.invalid(element, format!("{version:?} contains white space")));
        }
        let description = [
            self.optional(el, "Description1", "")?,
            self.optional(el, "Description2", "")?,
        ]
        .into_iter()
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
        let (resources_el, _) = self.required(el, "Resources")?;
        let mut resources = BTreeMap::new();
        let mut lines = BTreeMap::new();
        for item in resources_el.children.iter().filter(|c| c.name == "Item") {
            let resource = self.resource(item)?;
            let line = self.line(item.offset);
            if let Some(&first_line) = lines.get(&resource.id) {
                return Err(RegistryError::DuplicateResource {
                    file: self.file.to_owned(),
                    line,
                    object: id,
                    resource: resource.id,
                    first_line,
                });
            }
            lines.insert(resource.id, line);
            resources.insert(resource.id, resource);
        }
        Ok(ObjectDef {
            id,
            name,
            description,
            urn: self.optional(el, "ObjectURN", "")?,
            version,
            lwm2m_version: self.optional(el, "LWM2MVersion", "1.0")?,
            multiple: self.multiple(el)?,
            mandatory: self.mandatory(el)?,
            resources,
        })
    }

    /// One resource `<Item ID="..">`.
    fn resource(&self, item: &Element) -> Result<ResourceDef, RegistryError> {
        let id_text = item
            .attribute("ID")
            .ok_or_else(|| self.missing(item, "attribute ID"))?;
        let id = ResourceId(self.id(item, id_text.trim(), "a resource")?);
        let (ops_el, ops) = self.required(item, "Operations")?;
        let operations = Operations::from_ddf(ops)
            .ok_or_else(|| self.invalid(ops_el, format!("{ops:?} is not R, W, RW, E or empty")))?;
        let (type_el, type_name) = self.required(item, "Type")?;
        let data_type = DataType::from_ddf_name(type_name).ok_or_else(|| {
            let reason = format!(
                "{type_name:?} is not a data type (String, Integer, Unsigned Integer, Float, \
                 Boolean, Opaque, Time, Objlnk, Corelnk or empty)"
            );
            self.invalid(type_el, reason)
        })?;
        Ok(ResourceDef {
            id,
            name: self.name(item)?,
            operations,
            multiple: self.multiple(item)?,
            mandatory: self.mandatory(item)?,
            data_type,
            range: self.optional(item, "RangeEnumeration", "")?,
            units: self.optional(item, "Units", "")?,
            description: self.optional(item, "Description", "")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(def: &ObjectDef, id: u16) -> &ResourceDef {
        def.resource(ResourceId(id)).unwrap()
    }

    /// A small valid DDF document with one object.
    fn ddf(id: &str, version: &str, lwm2m: &str, items: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?>\n<LWM2M>\n  <Object ObjectType=\"MODefinition\">\n    \
             <Name>Test</Name>\n    <ObjectID>{id}</ObjectID>\n    \
             <LWM2MVersion>{lwm2m}</LWM2MVersion>\n    <ObjectVersion>{version}</ObjectVersion>\n    \
             <MultipleInstances>Multiple</MultipleInstances>\n    <Mandatory>Optional</Mandatory>\n    \
             <Resources>\n{items}    </Resources>\n  </Object>\n</LWM2M>\n"
        )
    }

    fn item(id: &str, ty: &str) -> String {
        format!(
            "      <Item ID=\"{id}\">\n        <Name>R{id}</Name>\n        <Operations>R</Operations>\n        \
             <MultipleInstances>Single</MultipleInstances>\n        <Mandatory>Optional</Mandatory>\n        \
             <Type>{ty}</Type>\n      </Item>\n"
        )
    }

    fn load_err(xml: &str) -> RegistryError {
        Registry::empty().load_xml("t.xml", xml).unwrap_err()
    }

    #[test]
    fn every_embedded_file_loads_alone() {
        for (name, xml) in EMBEDDED {
            let ids = Registry::empty().load_xml(name, xml).unwrap();
            let id: u16 = name.split('-').next().unwrap().parse().unwrap();
            assert_eq!(ids, vec![ObjectId(id)], "{name}");
        }
    }

    #[test]
    fn embedded_objects_and_versions() {
        let r = Registry::embedded();
        let ids: Vec<u16> = r.objects().map(|d| d.id.0).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7, 9, 3303, 3304, 3311]);
        assert_eq!(r.versions(ObjectId(0)), ["1.0", "1.1"]);
        assert_eq!(r.versions(ObjectId(6)), ["pre-1.0", "1.0"]);
        assert_eq!(r.object(ObjectId(3)).unwrap().version, "1.1");
        assert_eq!(r.object(ObjectId(6)).unwrap().version, "1.0");
        assert_eq!(r.source(ObjectId(6), "pre-1.0"), Some("6-pre1_0.xml"));
        assert_eq!(r.object(ObjectId(8)), None);
        let device = r.object_version(ObjectId(3), "1.0").unwrap();
        assert_eq!(device.urn, "urn:oma:lwm2m:oma:3");
        assert!(!device.multiple && device.mandatory);
    }

    #[test]
    fn key_facts() {
        // Core TS 1.1 Appendix E (objects 0 to 7); OMNA registry (9, IPSO).
        let r = Registry::embedded();
        let device = r.object(ObjectId(3)).unwrap();
        let manufacturer = res(device, 0);
        assert_eq!(manufacturer.name, "Manufacturer");
        assert_eq!(manufacturer.data_type, DataType::String);
        assert_eq!(manufacturer.operations, Operations::R);
        assert!(!manufacturer.multiple && !manufacturer.mandatory);
        let error_code = res(device, 11);
        assert_eq!(
            (
                error_code.data_type,
                error_code.multiple,
                error_code.mandatory
            ),
            (DataType::Integer, true, true)
        );
        let reboot = res(device, 4);
        assert_eq!(
            (reboot.operations, reboot.data_type),
            (Operations::E, DataType::None)
        );
        assert_eq!(res(device, 13).data_type, DataType::Time);
        assert_eq!(res(device, 22).data_type, DataType::Objlnk);

        let package = res(r.object(ObjectId(5)).unwrap(), 0);
        assert_eq!(
            (package.name.as_str(), package.data_type),
            ("Package", DataType::Opaque)
        );
        assert_eq!(package.operations, Operations::W);
        let lifetime = res(r.object(ObjectId(1)).unwrap(), 1);
        assert_eq!(
            (lifetime.name.as_str(), lifetime.units.as_str()),
            ("Lifetime", "s")
        );
        assert_eq!(
            (lifetime.data_type, lifetime.operations),
            (DataType::Integer, Operations::RW)
        );
        let public_key = res(r.object(ObjectId(0)).unwrap(), 3);
        assert_eq!(public_key.name, "Public Key or Identity");
        assert_eq!(
            (public_key.data_type, public_key.operations),
            (DataType::Opaque, Operations::None)
        );

        let latitude = res(r.object(ObjectId(6)).unwrap(), 0);
        assert_eq!(
            (latitude.data_type, latitude.units.as_str()),
            (DataType::Float, "Deg")
        );
        assert_eq!(res(r.object(ObjectId(6)).unwrap(), 3).name, "Radius");
        let pre = r.object_version(ObjectId(6), "pre-1.0").unwrap();
        assert_eq!(res(pre, 0).data_type, DataType::String);
        assert_eq!(
            (res(pre, 3).name.as_str(), res(pre, 3).data_type),
            ("Uncertainty", DataType::String)
        );

        let temperature = r.object(ObjectId(3303)).unwrap();
        assert_eq!(res(temperature, 5700).data_type, DataType::Float);
        assert_eq!(res(temperature, 5605).operations, Operations::E);
        let light = r.object(ObjectId(3311)).unwrap();
        assert_eq!(res(light, 5850).data_type, DataType::Boolean);
        assert_eq!(res(light, 5851).range, "0..100");
        assert_eq!(res(r.object(ObjectId(3304)).unwrap(), 5700).units, "%RH");
    }

    #[test]
    fn versions_differ_where_the_specification_does() {
        let r = Registry::embedded();
        let v = |id, ver| r.object_version(ObjectId(id), ver).unwrap();
        assert!(v(0, "1.0").resource(ResourceId(13)).is_none());
        assert!(res(v(0, "1.1"), 16).multiple);
        assert_eq!(res(v(0, "1.1"), 17).data_type, DataType::Objlnk);
        assert!(v(1, "1.0").resource(ResourceId(9)).is_none());
        assert_eq!(res(v(1, "1.1"), 11).data_type, DataType::UnsignedInteger);
        assert_eq!(res(v(4, "1.1"), 11).name, "SignalSNR");
        assert_eq!(res(v(5, "1.1"), 13).data_type, DataType::UnsignedInteger);
        assert_eq!(v(5, "1.0").resources.len(), 9);
        assert_eq!(v(0, "1.1").lwm2m_version, "1.1");
    }

    #[test]
    fn schema_views_resolve_declared_versions_and_variants() {
        let r = Registry::embedded();
        let latitude = (ObjectId(6), ResourceId(0));
        assert_eq!(
            r.resource(latitude.0, latitude.1).unwrap().data_type,
            DataType::Float
        );
        let quirk = r.with_variant(ObjectId(6), "pre-1.0");
        assert_eq!(
            quirk.resource(latitude.0, latitude.1).unwrap().data_type,
            DataType::String
        );
        assert_eq!(quirk.object(ObjectId(3)).unwrap().version, "1.1");

        let declared = BTreeMap::from([
            (ObjectId(0), "1.0".to_owned()),
            (ObjectId(3), "1.3".to_owned()),
            (ObjectId(5), "2.0".to_owned()),
        ]);
        let view = r.with_versions(&declared);
        assert_eq!(view.object(ObjectId(0)).unwrap().version, "1.0");
        assert!(view.resource(ObjectId(0), ResourceId(16)).is_none());
        assert_eq!(view.object(ObjectId(3)).unwrap().version, "1.1");
        assert_eq!(view.object(ObjectId(5)).unwrap().version, "1.1");
        assert_eq!(view.object(ObjectId(1)).unwrap().version, "1.1");
        let chained = view.with_variant(ObjectId(6), "pre-1.0");
        assert_eq!(chained.object(ObjectId(6)).unwrap().version, "pre-1.0");
        assert_eq!(chained.object(ObjectId(0)).unwrap().version, "1.0");
        assert!(
            r.with_variant(ObjectId(42), "1.0")
                .object(ObjectId(42))
                .is_none()
        );
    }

    #[test]
    fn variant_is_default_only_when_alone() {
        let mut r = Registry::empty();
        let xml = EMBEDDED
            .iter()
            .find(|(n, _)| *n == "6-pre1_0.xml")
            .unwrap()
            .1;
        r.load_xml("pre.xml", xml).unwrap();
        assert_eq!(r.object(ObjectId(6)).unwrap().version, "pre-1.0");
    }

    #[test]
    fn version_order_is_numeric() {
        assert_eq!(version_order("1.10", "1.9"), Ordering::Greater);
        assert_eq!(version_order("2.0", "1.99"), Ordering::Greater);
        assert_eq!(version_order("pre-1.0", "0.1"), Ordering::Less);
        assert_eq!(numbered("1.+1"), None);
        assert_eq!(numbered("1."), None);
    }

    #[test]
    fn text_cdata_and_entities() {
        let items = "      <Item ID=\" 7 \"><Name>A &amp; B &#x41;</Name><Operations>rw</Operations>\
                     <MultipleInstances>Multiple</MultipleInstances><Mandatory>Mandatory</Mandatory>\
                     <Type>Unsigned Integer</Type><Units/><Description><![CDATA[x < y & z]]> \n</Description></Item>\n";
        let mut r = Registry::empty();
        r.load_xml("t.xml", &ddf("42", "1.0", "1.0", items))
            .unwrap();
        let def = r.object(ObjectId(42)).unwrap();
        let item = res(def, 7);
        assert_eq!(item.name, "A & B A");
        assert_eq!(item.description, "x < y & z");
        assert_eq!(
            (item.operations, item.data_type),
            (Operations::RW, DataType::UnsignedInteger)
        );
        assert!(item.multiple && item.mandatory);
        assert_eq!(def.urn, "");
    }

    #[test]
    fn truncated_xml_names_file_and_line() {
        let xml = ddf("42", "1.0", "1.0", &item("0", "String"));
        let cut = xml.find("<Type>").unwrap();
        let err = load_err(&xml[..cut]);
        let RegistryError::Syntax {
            file,
            line,
            message,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((file.as_str(), *line), ("t.xml", 16));
        assert!(message.contains("not closed"), "{message}");
        assert!(
            err.to_string().starts_with("t.xml:16: XML syntax error"),
            "{err}"
        );

        let err = load_err("<LWM2M>\n<Object>\n</Obj>\n</LWM2M>");
        assert!(
            matches!(err, RegistryError::Syntax { line: 3, .. }),
            "{err}"
        );
        let err = load_err("<LWM2M>&bogus;</LWM2M>");
        assert!(err.to_string().contains("&bogus;"), "{err}");
    }

    #[test]
    fn bad_values_name_the_element_and_line() {
        let err = load_err(&ddf("42", "1.0", "1.0", &item("0", "Strin")));
        let RegistryError::Invalid {
            line,
            element,
            reason,
            ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((*line, element.as_str()), (16, "Type"));
        assert!(reason.contains("\"Strin\""), "{reason}");

        let err = load_err(&ddf("65535", "1.0", "1.0", ""));
        assert!(
            matches!(&err, RegistryError::Invalid { line: 5, element, .. } if element == "ObjectID"),
            "{err}"
        );
        let err = load_err(&ddf("x", "1.0", "1.0", ""));
        assert!(
            matches!(&err, RegistryError::Invalid { element, .. } if element == "ObjectID"),
            "{err}"
        );
        let err = load_err(&ddf(
            "1",
            "1.0",
            "1.0",
            &item("0", "String").replace(">R<", ">X<"),
        ));
        assert!(
            matches!(&err, RegistryError::Invalid { element, .. } if element == "Operations"),
            "{err}"
        );
        let err = load_err(&ddf("1", "1 0", "1.0", ""));
        assert!(
            matches!(&err, RegistryError::Invalid { element, .. } if element == "ObjectVersion"),
            "{err}"
        );
        let err = load_err(&ddf(
            "1",
            "1.0",
            "1.0",
            &item("0", "String").replace("Single", "Many"),
        ));
        assert!(
            err.to_string().contains("neither Multiple nor Single"),
            "{err}"
        );
        let err = load_err(&ddf(
            "1",
            "1.0",
            "1.0",
            &item("0", "String").replace("<Name>R0</Name>", "<Name> </Name>"),
        ));
        assert!(
            matches!(&err, RegistryError::Invalid { element, .. } if element == "Name"),
            "{err}"
        );
        let twice =
            ddf("1", "1.0", "1.0", "").replace("<Name>Test</Name>", "<Name>A</Name><Name>B</Name>");
        assert!(load_err(&twice).to_string().contains("appears twice"));
        assert!(
            load_err("<Foo/>")
                .to_string()
                .contains("root element must be <LWM2M>")
        );
        assert!(load_err("").to_string().contains("no root element"));
        assert!(
            load_err("<LWM2M/><LWM2M/>")
                .to_string()
                .contains("second root")
        );
    }

    #[test]
    fn missing_elements_are_named() {
        let err = load_err(&ddf(
            "1",
            "1.0",
            "1.0",
            &item("0", "String").replace("<Type>String</Type>", ""),
        ));
        assert_eq!(err.to_string(), "t.xml:11: <Item> has no <Type>");
        let err = load_err(&ddf(
            "1",
            "1.0",
            "1.0",
            &item("0", "String").replace(" ID=\"0\"", ""),
        ));
        assert_eq!(err.to_string(), "t.xml:11: <Item> has no attribute ID");
        let err = load_err("<LWM2M>\n</LWM2M>");
        assert_eq!(err.to_string(), "t.xml:1: <LWM2M> has no <Object>");
        let no_resources = ddf("1", "1.0", "1.0", "").replace("<Resources>\n    </Resources>", "");
        assert!(
            load_err(&no_resources)
                .to_string()
                .ends_with("<Object> has no <Resources>")
        );
    }

    #[test]
    fn duplicate_resource_is_reported() {
        let items = format!("{}{}", item("4", "String"), item("4", "Integer"));
        let err = load_err(&ddf("42", "1.0", "1.0", &items));
        assert_eq!(
            err.to_string(),
            "t.xml:18: object 42 defines resource 4 twice (first at line 11)"
        );
    }

    #[test]
    fn duplicate_objects_across_files_are_errors_and_load_nothing() {
        let mut r = Registry::empty();
        r.load_xml("a.xml", &ddf("42", "1.0", "1.0", &item("0", "String")))
            .unwrap();
        let err = r
            .load_xml("b.xml", &ddf("42", "1.0", "1.0", &item("0", "Integer")))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.xml:3: object 42 version 1.0 is already loaded from a.xml"
        );
        assert_eq!(
            res(r.object(ObjectId(42)).unwrap(), 0).data_type,
            DataType::String
        );

        // Two objects in one document: the second is a duplicate, so neither loads.
        let two = format!(
            "<LWM2M>{}{}</LWM2M>",
            ddf("43", "1.0", "1.0", "")
                .split("<LWM2M>")
                .nth(1)
                .unwrap()
                .replace("</LWM2M>\n", ""),
            ddf("42", "1.0", "1.0", "")
                .split("<LWM2M>")
                .nth(1)
                .unwrap()
                .replace("</LWM2M>\n", "")
        );
        assert!(matches!(
            r.load_xml("c.xml", &two),
            Err(RegistryError::DuplicateObject { .. })
        ));
        assert!(r.object(ObjectId(43)).is_none());
        assert!(matches!(
            Registry::embedded().load_xml("mine.xml", EMBEDDED[5].1),
            Err(RegistryError::DuplicateObject { first_file, .. }) if first_file == "3-1_0.xml"
        ));
    }

    #[test]
    fn load_documents_in_order_and_reports_clashes() {
        let (a, b) = (
            ddf("42", "1.0", "1.0", &item("0", "String")),
            ddf("42", "1.1", "1.1", &item("1", "Float")),
        );
        let mut r = Registry::empty();
        let report = r
            .load_documents([("dir/a.XML", a.as_str()), ("dir/b.xml", b.as_str())])
            .unwrap();
        assert_eq!(
            report.loaded,
            [(ObjectId(42), "1.0".into()), (ObjectId(42), "1.1".into())]
        );
        assert_eq!(report.notes.len(), 1);
        let note = report.notes[0].to_string();
        assert!(
            note.contains(
                "dir/b.xml: object 42: version 1.1 (LwM2M 1.1) loaded beside version 1.0 (LwM2M 1.0)"
            ),
            "{note}"
        );
        assert_eq!(r.object(ObjectId(42)).unwrap().version, "1.1");
        assert_eq!(r.source(ObjectId(42), "1.0"), Some("dir/a.XML"));
    }

    #[test]
    fn load_documents_errors_name_the_file_and_load_nothing() {
        let doc = ddf("42", "1.0", "1.0", "");
        let mut r = Registry::empty();
        let err = r
            .load_documents([("a.xml", doc.as_str()), ("b.xml", doc.as_str())])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "b.xml:3: object 42 version 1.0 is already loaded from a.xml"
        );
        assert!(r.objects().next().is_none());

        let err = r
            .load_documents([("a.xml", doc.as_str()), ("b.xml", "<LWM2M>")])
            .unwrap_err();
        assert!(
            err.to_string().starts_with("b.xml:1: XML syntax error"),
            "{err}"
        );
        assert!(r.objects().next().is_none());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let xml = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(load_err(&xml).to_string().contains("nest deeper"));
    }

    #[test]
    fn every_truncation_of_a_shipped_file_fails_cleanly() {
        let xml = EMBEDDED[5].1;
        let end = xml.rfind("</LWM2M>").unwrap();
        for cut in (0..end).filter(|&i| xml.is_char_boundary(i)) {
            assert!(
                Registry::empty().load_xml("cut.xml", &xml[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Registry::empty().load_xml("fuzz.xml", &String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn mutated_files_never_panic(index in 0..EMBEDDED.len(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = EMBEDDED[index].1.as_bytes().to_vec();
            let at = at % bytes.len();
            bytes[at] = byte;
            let _ = Registry::empty().load_xml("fuzz.xml", &String::from_utf8_lossy(&bytes));
        }
    }
}
