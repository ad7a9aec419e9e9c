//! The object tree a client holds, and the semantics of the Device Management and
//! Bootstrap operations on it (Core TS 1.1 §5.4, §5.2.7): what is readable, writable,
//! executable, which instances may be created or deleted, and the CoAP code of every refusal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(test)]
use crate::ids::ResourceInstanceId;
use crate::ids::{InstanceId, Lwm2mPath, ObjectId, ResourceId};
use crate::model::{ObjectDef, Schema};
use crate::node::{Instance, Node, ResourceValue};
use crate::value::Value;

/// Why an operation on the tree is refused; [`DmError::coap_code`] gives the response code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DmError {
    /// The path does not exist (4.04).
    #[error("{path} not found")]
    NotFound {
        /// The path.
        path: Lwm2mPath,
    },
    /// The object's definition forbids the operation on it (4.05).
    #[error("{operation} not allowed on {path}")]
    NotAllowed {
        /// The path.
        path: Lwm2mPath,
        /// The operation.
        operation: &'static str,
    },
    /// The request is not valid for the target (4.00).
    #[error("bad request on {path}: {reason}")]
    BadRequest {
        /// The path.
        path: Lwm2mPath,
        /// Why.
        reason: String,
    },
}

impl DmError {
    /// The CoAP response code (class, detail).
    pub fn coap_code(&self) -> (u8, u8) {
        match self {
            Self::NotFound { .. } => (4, 4),
            Self::NotAllowed { .. } => (4, 5),
            Self::BadRequest { .. } => (4, 0),
        }
    }
}

/// How a Write applies (Core TS 1.1 §5.4.3): PUT replaces, POST updates partially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace the target (PUT).
    Replace,
    /// Update only the resources given (POST).
    PartialUpdate,
}

/// One object: its definition (if known) and its instances.
#[derive(Debug, Clone)]
struct ObjectEntry {
    def: Option<Arc<ObjectDef>>,
    instances: BTreeMap<InstanceId, Instance>,
    max_instances: Option<usize>,
    /// See [`ObjectTree::revision`].
    revision: u64,
}

impl ObjectEntry {
    fn new(def: Option<Arc<ObjectDef>>, max_instances: Option<usize>) -> Self {
        Self {
            def,
            instances: BTreeMap::new(),
            max_instances,
            revision: next_revision(),
        }
    }

    /// Marks the object changed; returns its instances to change.
    fn touch(&mut self) -> &mut BTreeMap<InstanceId, Instance> {
        self.revision = next_revision();
        &mut self.instances
    }
}

/// A stamp no object of any tree in this process had before (so a stamp names one state
/// of one object, even across clones of a tree).
fn next_revision() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The objects, instances and values of one client.
///
/// Objects are shared between clones until one of them changes (copy on write, per
/// object): a client's factory copy and the trees of the clients made from one profile
/// hold one copy of every object none of them changed.
#[derive(Debug, Clone, Default)]
pub struct ObjectTree {
    objects: BTreeMap<ObjectId, Arc<ObjectEntry>>,
}

impl Schema for ObjectTree {
    fn resource(&self, object: ObjectId, resource: ResourceId) -> Option<&crate::ResourceDef> {
        self.objects
            .get(&object)?
            .def
            .as_ref()?
            .resources
            .get(&resource)
    }
}

fn not_found(path: Lwm2mPath) -> DmError {
    DmError::NotFound { path }
}

/// Whether a Security instance is a Bootstrap-Server account (/0/x/1).
fn is_bootstrap_account(account: &Instance) -> bool {
    matches!(
        account.get(&ResourceId(1)),
        Some(ResourceValue::Single(Value::Boolean(true)))
    )
}

/// A Security instance's Server URI (/0/x/0), if it has a non-empty one.
pub fn account_uri(account: &Instance) -> Option<&str> {
    match account.get(&ResourceId(0)) {
        Some(ResourceValue::Single(Value::String(uri))) if !uri.is_empty() => Some(uri),
        _ => None,
    }
}

impl ObjectTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an object (without instances) with its definition; `max_instances` limits
    /// Create (a single-instance object allows one).
    pub fn add_object(&mut self, def: Arc<ObjectDef>, max_instances: Option<usize>) {
        let max = if def.multiple { max_instances } else { Some(1) };
        self.objects
            .insert(def.id, Arc::new(ObjectEntry::new(Some(def), max)));
    }

    /// Adds an object the registry does not know (values keep the types given).
    pub fn add_unknown_object(&mut self, id: ObjectId) {
        self.objects
            .entry(id)
            .or_insert_with(|| Arc::new(ObjectEntry::new(None, None)));
    }

    /// Sets an instance wholesale (factory configuration), bypassing operation checks.
    pub fn put_instance(&mut self, object: ObjectId, id: InstanceId, instance: Instance) {
        if let Some(o) = self.objects.get_mut(&object).map(Arc::make_mut) {
            o.touch().insert(id, instance);
        }
    }

    /// A stamp of `object`'s current contents: it changes with every change to the object
    /// (through any method here) and two trees' objects with equal stamps hold the same
    /// (one is a copy of the other). Lets a caller cache what it derives from an object.
    /// `None`: no such object.
    pub fn revision(&self, object: ObjectId) -> Option<u64> {
        self.objects.get(&object).map(|o| o.revision)
    }

    /// Sets one resource value, bypassing operation checks (value generators, state changes).
    pub fn set(&mut self, path: &Lwm2mPath, value: ResourceValue) -> Result<(), DmError> {
        let Lwm2mPath::Resource(o, i, r) = *path else {
            return Err(DmError::BadRequest {
                path: *path,
                reason: "set needs a resource path".into(),
            });
        };
        let inst = self
            .objects
            .get_mut(&o)
            .map(Arc::make_mut)
            .and_then(|e| e.touch().get_mut(&i))
            .ok_or_else(|| not_found(*path))?;
        inst.insert(r, value);
        Ok(())
    }

    /// The value at a resource or resource-instance path, bypassing operation checks.
    pub fn get(&self, path: &Lwm2mPath) -> Option<&Value> {
        let (o, i, r) = (path.object_id()?, path.instance_id()?, path.resource_id()?);
        let res = self.objects.get(&o)?.instances.get(&i)?.get(&r)?;
        match (res, path.resource_instance_id()) {
            (ResourceValue::Single(v), None) => Some(v),
            (ResourceValue::Multiple(m), Some(ri)) => m.get(&ri),
            _ => None,
        }
    }

    /// The object ids, in order.
    pub fn object_ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.objects.keys().copied()
    }

    /// The instance ids of an object.
    pub fn instance_ids(&self, object: ObjectId) -> Vec<InstanceId> {
        self.objects
            .get(&object)
            .map(|o| o.instances.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The LwM2M Server account of the Security object (Core TS 1.1 Appendix E.1): the
    /// first instance that is not a Bootstrap-Server account (/0/x/1) and has a Server URI
    /// (/0/x/0). The one rule for which account a client uses toward its server.
    pub fn server_account(&self) -> Option<(InstanceId, &Instance)> {
        self.security_accounts()
            .find(|(_, a)| !is_bootstrap_account(a) && account_uri(a).is_some())
    }

    /// The Bootstrap-Server account of the Security object: the first instance whose
    /// /0/x/1 is true.
    pub fn bootstrap_account(&self) -> Option<(InstanceId, &Instance)> {
        self.security_accounts()
            .find(|(_, a)| is_bootstrap_account(a))
    }

    fn security_accounts(&self) -> impl Iterator<Item = (InstanceId, &Instance)> {
        let security = self.objects.get(&ObjectId(0));
        security
            .into_iter()
            .flat_map(|o| o.instances.iter().map(|(id, inst)| (*id, inst)))
    }

    /// The definition of an object, if known.
    pub fn definition(&self, object: ObjectId) -> Option<&ObjectDef> {
        self.objects.get(&object)?.def.as_deref()
    }

    /// The whole instance, bypassing operation checks.
    pub fn instance(&self, object: ObjectId, id: InstanceId) -> Option<&Instance> {
        self.objects.get(&object)?.instances.get(&id)
    }

    fn readable(&self, o: ObjectId, r: ResourceId) -> bool {
        match self.resource(o, r) {
            Some(d) => d.operations.readable(),
            None => true,
        }
    }

    fn check_resource_op(
        &self,
        path: &Lwm2mPath,
        operation: &'static str,
        allowed: fn(crate::model::Operations) -> bool,
    ) -> Result<(), DmError> {
        let (Some(o), Some(r)) = (path.object_id(), path.resource_id()) else {
            return Ok(());
        };
        match self.resource(o, r) {
            Some(d) if !allowed(d.operations) => Err(DmError::NotAllowed {
                path: *path,
                operation,
            }),
            _ => Ok(()),
        }
    }

    fn readable_instance(&self, o: ObjectId, inst: &Instance) -> Instance {
        inst.iter()
            .filter(|(r, _)| self.readable(o, **r))
            .map(|(r, v)| (*r, v.clone()))
            .collect()
    }

    /// Read (Core TS 1.1 §5.4.1): the readable resources below `path`.
    pub fn read(&self, path: &Lwm2mPath) -> Result<Node, DmError> {
        let o = path.object_id().ok_or(DmError::BadRequest {
            path: *path,
            reason: "Read of the root needs Read-Composite".into(),
        })?;
        let obj = self.objects.get(&o).ok_or_else(|| not_found(*path))?;
        if path.resource_id().is_some() {
            self.check_resource_op(path, "Read", crate::model::Operations::readable)?;
        }
        match *path {
            Lwm2mPath::Object(_) => Ok(Node::Object(
                obj.instances
                    .iter()
                    .map(|(i, inst)| (*i, self.readable_instance(o, inst)))
                    .collect(),
            )),
            Lwm2mPath::Instance(_, i) => obj
                .instances
                .get(&i)
                .map(|inst| Node::Instance(self.readable_instance(o, inst)))
                .ok_or_else(|| not_found(*path)),
            Lwm2mPath::Resource(_, i, r) => obj
                .instances
                .get(&i)
                .and_then(|inst| inst.get(&r))
                .map(|v| Node::Resource(v.clone()))
                .ok_or_else(|| not_found(*path)),
            Lwm2mPath::ResourceInstance(..) => self
                .get(path)
                .map(|v| Node::ResourceInstance(v.clone()))
                .ok_or_else(|| not_found(*path)),
            Lwm2mPath::Root => Err(not_found(*path)),
        }
    }

    /// Write (Core TS 1.1 §5.4.3) on an instance, resource or resource instance.
    /// With `bootstrap`, operation checks are skipped and missing instances are created
    /// (Bootstrap-Write, §5.2.7.4).
    pub fn write(
        &mut self,
        path: &Lwm2mPath,
        node: &Node,
        mode: WriteMode,
        bootstrap: bool,
    ) -> Result<(), DmError> {
        node.check_level(path).map_err(|e| DmError::BadRequest {
            path: *path,
            reason: e.to_string(),
        })?;
        let o = path.object_id().ok_or(DmError::BadRequest {
            path: *path,
            reason: "Write needs an object path".into(),
        })?;
        if !self.objects.contains_key(&o) {
            return Err(not_found(*path));
        }
        // Check every resource written before changing anything.
        let mut targets: Vec<(InstanceId, &Instance)> = Vec::new();
        let single_resource;
        match (node, *path) {
            (Node::Object(m), _) if bootstrap => targets.extend(m.iter().map(|(i, v)| (*i, v))),
            (Node::Object(_), _) => {
                return Err(DmError::NotAllowed {
                    path: *path,
                    operation: "Write on an object",
                });
            }
            (Node::Instance(inst), Lwm2mPath::Instance(_, i)) => targets.push((i, inst)),
            (Node::Resource(v), Lwm2mPath::Resource(_, i, r)) => {
                single_resource = [(r, v.clone())].into_iter().collect::<Instance>();
                targets.push((i, &single_resource));
            }
            (Node::ResourceInstance(v), Lwm2mPath::ResourceInstance(_, i, r, ri)) => {
                if !bootstrap {
                    self.check_resource_op(path, "Write", crate::model::Operations::writable)?;
                }
                let inst = self.instance_mut(o, i, bootstrap, path)?;
                match inst.get_mut(&r) {
                    Some(ResourceValue::Multiple(m)) => {
                        m.insert(ri, v.clone());
                        return Ok(());
                    }
                    None if bootstrap => {
                        inst.insert(r, ResourceValue::Multiple([(ri, v.clone())].into()));
                        return Ok(());
                    }
                    _ => return Err(not_found(*path)),
                }
            }
            _ => {
                return Err(DmError::BadRequest {
                    path: *path,
                    reason: "payload level does not match the path".into(),
                });
            }
        }
        if !bootstrap {
            for (i, inst) in &targets {
                if !self
                    .objects
                    .get(&o)
                    .is_some_and(|e| e.instances.contains_key(i))
                {
                    return Err(not_found(*path));
                }
                for (r, v) in inst.iter() {
                    let rp = Lwm2mPath::Resource(o, *i, *r);
                    match self.resource(o, *r) {
                        None if self.definition(o).is_some() => return Err(not_found(rp)),
                        Some(d) if !d.operations.writable() => {
                            return Err(DmError::NotAllowed {
                                path: rp,
                                operation: "Write",
                            });
                        }
                        Some(d) if d.multiple != matches!(v, ResourceValue::Multiple(_)) => {
                            return Err(DmError::BadRequest {
                                path: rp,
                                reason: "single/multiple resource mismatch".into(),
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        let owned: Vec<(InstanceId, Instance)> =
            targets.into_iter().map(|(i, v)| (i, v.clone())).collect();
        let replace_instance =
            matches!(path, Lwm2mPath::Instance(..)) && mode == WriteMode::Replace;
        for (i, new) in owned {
            let writable: Vec<ResourceId> = if replace_instance && !bootstrap {
                self.definition(o)
                    .map(|d| {
                        d.resources
                            .values()
                            .filter(|r| r.operations.writable())
                            .map(|r| r.id)
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let inst = self.instance_mut(o, i, bootstrap, path)?;
            for r in writable {
                inst.remove(&r);
            }
            for (r, v) in new {
                match (inst.get_mut(&r), v, mode) {
                    (
                        Some(ResourceValue::Multiple(old)),
                        ResourceValue::Multiple(m),
                        WriteMode::PartialUpdate,
                    ) => {
                        old.extend(m);
                    }
                    (_, v, _) => {
                        inst.insert(r, v);
                    }
                }
            }
        }
        Ok(())
    }

    fn instance_mut(
        &mut self,
        o: ObjectId,
        i: InstanceId,
        create: bool,
        path: &Lwm2mPath,
    ) -> Result<&mut Instance, DmError> {
        let instances = self
            .objects
            .get_mut(&o)
            .map(Arc::make_mut)
            .ok_or_else(|| not_found(*path))?
            .touch();
        if create {
            Ok(instances.entry(i).or_default())
        } else {
            instances.get_mut(&i).ok_or_else(|| not_found(*path))
        }
    }

    /// Create (Core TS 1.1 §5.4.6): a new instance of `object`, with the id given or the
    /// lowest free one. Returns the new instance's id.
    pub fn create(
        &mut self,
        object: ObjectId,
        id: Option<InstanceId>,
        instance: Instance,
    ) -> Result<InstanceId, DmError> {
        let path = Lwm2mPath::Object(object);
        let obj = self.objects.get(&object).ok_or_else(|| not_found(path))?;
        if obj.max_instances.is_some_and(|m| obj.instances.len() >= m) {
            return Err(DmError::BadRequest {
                path,
                reason: "no more instances can be created".into(),
            });
        }
        let id = match id {
            Some(id) if obj.instances.contains_key(&id) => {
                return Err(DmError::BadRequest {
                    path: Lwm2mPath::Instance(object, id),
                    reason: "instance already exists".into(),
                });
            }
            Some(id) => id,
            None => (0..u16::MAX)
                .map(InstanceId)
                .find(|i| !obj.instances.contains_key(i))
                .ok_or(DmError::BadRequest {
                    path,
                    reason: "no free instance id".into(),
                })?,
        };
        if let Some(def) = &obj.def {
            for (r, v) in &instance {
                match def.resources.get(r) {
                    None => return Err(not_found(Lwm2mPath::Resource(object, id, *r))),
                    Some(d) if d.multiple != matches!(v, ResourceValue::Multiple(_)) => {
                        return Err(DmError::BadRequest {
                            path: Lwm2mPath::Resource(object, id, *r),
                            reason: "single/multiple resource mismatch".into(),
                        });
                    }
                    _ => {}
                }
            }
        }
        if let Some(o) = self.objects.get_mut(&object).map(Arc::make_mut) {
            o.touch().insert(id, instance);
        }
        Ok(id)
    }

    /// Delete (Core TS 1.1 §5.4.7) of an instance.
    pub fn delete(&mut self, path: &Lwm2mPath) -> Result<(), DmError> {
        let Lwm2mPath::Instance(o, i) = *path else {
            return Err(DmError::NotAllowed {
                path: *path,
                operation: "Delete of anything but an instance",
            });
        };
        let obj = self
            .objects
            .get_mut(&o)
            .map(Arc::make_mut)
            .ok_or_else(|| not_found(*path))?;
        obj.touch()
            .remove(&i)
            .map(|_| ())
            .ok_or_else(|| not_found(*path))
    }

    /// Bootstrap-Delete (Core TS 1.1 §5.2.7.5) of `/`, `/O` or `/O/I`: never 4.04; the
    /// Bootstrap-Server Security instance and the Device object are kept.
    pub fn bootstrap_delete(&mut self, path: &Lwm2mPath) -> Result<(), DmError> {
        if path.depth() > 2 {
            return Err(DmError::BadRequest {
                path: *path,
                reason: "Bootstrap-Delete targets /, /O or /O/I".into(),
            });
        }
        let protected = |o: ObjectId, inst: &Instance| {
            o == ObjectId(3)
                || (o == ObjectId(0)
                    && matches!(
                        inst.get(&ResourceId(1)),
                        Some(ResourceValue::Single(Value::Boolean(true)))
                    ))
        };
        for (o, obj) in self.objects.iter_mut() {
            if path.object_id().is_some_and(|p| p != *o) {
                continue;
            }
            Arc::make_mut(obj).touch().retain(|i, inst| {
                protected(*o, inst) || path.instance_id().is_some_and(|p| p != *i)
            });
        }
        Ok(())
    }

    /// Checks that Execute is allowed on `path` (Core TS 1.1 §5.4.5).
    pub fn check_execute(&self, path: &Lwm2mPath) -> Result<(), DmError> {
        let Lwm2mPath::Resource(o, i, _) = *path else {
            return Err(DmError::NotAllowed {
                path: *path,
                operation: "Execute on anything but a resource",
            });
        };
        if self.instance(o, i).is_none() {
            return Err(not_found(*path));
        }
        match path.resource_id().and_then(|r| self.resource(o, r)) {
            Some(d) if d.operations.executable() => Ok(()),
            Some(_) => Err(DmError::NotAllowed {
                path: *path,
                operation: "Execute",
            }),
            None => Err(not_found(*path)),
        }
    }

    /// The resource instance ids of a multiple resource (for Discover's `dim`).
    pub fn dim(&self, path: &Lwm2mPath) -> Option<usize> {
        let Lwm2mPath::Resource(o, i, r) = *path else {
            return None;
        };
        match self.objects.get(&o)?.instances.get(&i)?.get(&r)? {
            ResourceValue::Multiple(m) => Some(m.len()),
            ResourceValue::Single(_) => None,
        }
    }

    /// Removes one resource instance (used by Write-replace of a multiple resource).
    pub fn remove_resource_instance(&mut self, path: &Lwm2mPath) -> bool {
        let Lwm2mPath::ResourceInstance(o, i, r, ri) = *path else {
            return false;
        };
        match self
            .objects
            .get_mut(&o)
            .map(Arc::make_mut)
            .and_then(|e| e.touch().get_mut(&i))
            .and_then(|inst| inst.get_mut(&r))
        {
            Some(ResourceValue::Multiple(m)) => m.remove(&ri).is_some(),
            _ => false,
        }
    }
}

/// One argument of an Execute (Core TS 1.1 §5.4.5): a digit and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteArg {
    /// The argument number, 0-9.
    pub id: u8,
    /// The value between single quotes, if any.
    pub value: Option<String>,
}

/// Why an Execute payload is not a list of arguments (Core TS 1.1 §5.4.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteArgsError {
    /// Another character where the grammar wants `expected` (a digit, `'` or `,`).
    #[error("execute arguments {text:?}: expected {expected} at byte {pos}")]
    Expected {
        /// The payload.
        text: String,
        /// What the grammar wants there.
        expected: &'static str,
        /// The byte offset.
        pos: usize,
    },
    /// A value without its closing `'`.
    #[error("execute arguments {text:?}: unterminated value")]
    Unterminated {
        /// The payload.
        text: String,
    },
}

/// Parses Execute arguments: `arg *( "," arg )`, `arg = DIGIT [ "=" "'" *CHAR "'" ]`,
/// where the value excludes `'` (Core TS 1.1 §5.4.5). An empty payload has no arguments.
pub fn parse_execute_args(s: &str) -> Result<Vec<ExecuteArg>, ExecuteArgsError> {
    let expected = |expected, pos| ExecuteArgsError::Expected {
        text: s.to_owned(),
        expected,
        pos,
    };
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut pos = 0;
    if b.is_empty() {
        return Ok(out);
    }
    loop {
        let id = match b.get(pos) {
            Some(c) if c.is_ascii_digit() => c - b'0',
            _ => return Err(expected("a digit", pos)),
        };
        pos += 1;
        let mut value = None;
        if b.get(pos) == Some(&b'=') {
            if b.get(pos + 1) != Some(&b'\'') {
                return Err(expected("'", pos + 1));
            }
            let start = pos + 2;
            let len = b
                .get(start..)
                .and_then(|rest| rest.iter().position(|c| *c == b'\''))
                .ok_or_else(|| ExecuteArgsError::Unterminated { text: s.to_owned() })?;
            value = Some(s[start..start + len].to_owned());
            pos = start + len + 1;
        }
        out.push(ExecuteArg { id, value });
        match b.get(pos) {
            None => return Ok(out),
            Some(b',') => pos += 1,
            Some(_) => return Err(expected(",", pos)),
        }
    }
}

/// Formats Execute arguments (inverse of [`parse_execute_args`]).
pub fn format_execute_args(args: &[ExecuteArg]) -> String {
    args.iter()
        .map(|a| match &a.value {
            Some(v) => format!("{}='{v}'", a.id),
            None => a.id.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Operations, ResourceDef};
    use crate::value::DataType;

    fn ri(id: u16) -> ResourceInstanceId {
        ResourceInstanceId(id)
    }

    #[test]
    fn the_server_account_is_the_first_non_bootstrap_instance_with_a_uri() {
        let account = |uri: &str, bootstrap: Option<bool>| {
            let mut a = Instance::default();
            a.insert(
                ResourceId(0),
                ResourceValue::Single(Value::String(uri.into())),
            );
            if let Some(b) = bootstrap {
                a.insert(ResourceId(1), ResourceValue::Single(Value::Boolean(b)));
            }
            a
        };
        let mut tree = ObjectTree::new();
        tree.add_unknown_object(ObjectId(0));
        assert!(tree.server_account().is_none() && tree.bootstrap_account().is_none());
        tree.put_instance(
            ObjectId(0),
            InstanceId(0),
            account("coap://10.0.0.2", Some(true)),
        );
        tree.put_instance(ObjectId(0), InstanceId(1), account("", Some(false)));
        tree.put_instance(ObjectId(0), InstanceId(2), account("coap://10.0.0.1", None));
        tree.put_instance(
            ObjectId(0),
            InstanceId(3),
            account("coap://10.0.0.3", Some(false)),
        );
        assert_eq!(
            tree.bootstrap_account().map(|(id, _)| id),
            Some(InstanceId(0))
        );
        // Instance 1 has no URI; instance 2 is not a bootstrap account (no /0/x/1).
        let (id, server) = tree.server_account().unwrap();
        assert_eq!(
            (id, account_uri(server)),
            (InstanceId(2), Some("coap://10.0.0.1"))
        );
    }

    fn device_def() -> Arc<ObjectDef> {
        let r =
            |id: u16, ops, ty, multiple| ResourceDef::new(id, format!("r{id}"), ops, ty, multiple);
        let mut def = ObjectDef::new(
            3,
            "Device",
            "1.0",
            false,
            [
                r(0, Operations::R, DataType::String, false),
                r(4, Operations::E, DataType::None, false),
                r(11, Operations::R, DataType::Integer, true),
                r(14, Operations::RW, DataType::String, false),
            ],
        );
        def.mandatory = true;
        Arc::new(def)
    }

    fn tree() -> ObjectTree {
        let mut t = ObjectTree::new();
        t.add_object(device_def(), None);
        let inst: Instance = [
            (
                ResourceId(0),
                ResourceValue::Single(Value::String("ACME".into())),
            ),
            (
                ResourceId(11),
                ResourceValue::Multiple([(ri(0), Value::Integer(0))].into()),
            ),
            (
                ResourceId(14),
                ResourceValue::Single(Value::String("+01".into())),
            ),
        ]
        .into();
        t.put_instance(ObjectId(3), InstanceId(0), inst);
        t
    }

    #[test]
    fn revision_names_the_state_of_an_object() {
        let mut t = tree();
        t.add_unknown_object(ObjectId(9));
        let dev = |t: &ObjectTree| t.revision(ObjectId(3)).unwrap();
        assert_eq!(t.revision(ObjectId(5)), None);
        let start = dev(&t);
        let copy = t.clone();
        assert_eq!(dev(&copy), start, "a copy holds the same state");
        let _ = t.read(&Lwm2mPath::instance(3, 0));
        assert_eq!(dev(&t), start, "reading changes nothing");
        let nine = t.revision(ObjectId(9));
        let mut seen = vec![start];
        let mut changed = |t: &ObjectTree, what: &str| {
            let r = dev(t);
            assert!(!seen.contains(&r), "{what}: {r} seen before");
            seen.push(r);
        };
        let v = |s: &str| ResourceValue::Single(Value::String(s.into()));
        t.set(&Lwm2mPath::resource(3, 0, 14), v("+02")).unwrap();
        changed(&t, "set");
        let node = Node::Resource(v("+03"));
        t.write(
            &Lwm2mPath::resource(3, 0, 14),
            &node,
            WriteMode::Replace,
            false,
        )
        .unwrap();
        changed(&t, "write");
        t.remove_resource_instance(&Lwm2mPath::ResourceInstance(
            ObjectId(3),
            InstanceId(0),
            ResourceId(11),
            ri(0),
        ));
        changed(&t, "remove a resource instance");
        t.delete(&Lwm2mPath::instance(3, 0)).unwrap();
        changed(&t, "delete");
        t.create(ObjectId(3), None, Instance::new()).unwrap();
        changed(&t, "create");
        t.put_instance(ObjectId(3), InstanceId(0), Instance::new());
        changed(&t, "put an instance");
        assert_eq!(t.revision(ObjectId(9)), nine, "another object");
        t.bootstrap_delete(&Lwm2mPath::Root).unwrap();
        changed(&t, "bootstrap delete");
        // Back to the copy (a factory reset): its stamp, which differs from all since.
        t = copy;
        assert_eq!(dev(&t), start);
    }

    /// Clones share their objects until one changes: each change lands in its own tree
    /// only, whichever of the two made it, and an object no one changed stays one copy.
    #[test]
    fn clones_share_objects_until_one_changes() {
        let mut a = tree();
        a.add_unknown_object(ObjectId(9));
        let mut b = a.clone();
        let shared = |a: &ObjectTree, b: &ObjectTree, o: u16| {
            Arc::ptr_eq(&a.objects[&ObjectId(o)], &b.objects[&ObjectId(o)])
        };
        assert!(shared(&a, &b, 3) && shared(&a, &b, 9));
        let path = Lwm2mPath::resource(3, 0, 14);
        let v = |s: &str| ResourceValue::Single(Value::String(s.into()));
        b.set(&path, v("+02")).unwrap();
        assert_eq!(a.get(&path), Some(&Value::String("+01".into())));
        assert_eq!(b.get(&path), Some(&Value::String("+02".into())));
        assert!(!shared(&a, &b, 3) && shared(&a, &b, 9));
        let c = a.clone();
        a.delete(&Lwm2mPath::instance(3, 0)).unwrap();
        assert!(a.instance(ObjectId(3), InstanceId(0)).is_none());
        assert!(c.instance(ObjectId(3), InstanceId(0)).is_some());
        assert!(b.instance(ObjectId(3), InstanceId(0)).is_some());
    }

    #[test]
    fn read_codes() {
        let t = tree();
        assert!(
            matches!(t.read(&Lwm2mPath::instance(3, 0)), Ok(Node::Instance(i)) if i.len() == 3)
        );
        assert_eq!(
            t.read(&Lwm2mPath::object(9)).unwrap_err().coap_code(),
            (4, 4)
        );
        assert_eq!(
            t.read(&Lwm2mPath::resource(3, 0, 4))
                .unwrap_err()
                .coap_code(),
            (4, 5)
        );
        assert_eq!(
            t.read(&Lwm2mPath::resource(3, 1, 0))
                .unwrap_err()
                .coap_code(),
            (4, 4)
        );
        assert_eq!(
            t.read(&Lwm2mPath::resource_instance(3, 0, 11, 0)).unwrap(),
            Node::ResourceInstance(Value::Integer(0))
        );
    }

    #[test]
    fn write_codes_and_modes() {
        let mut t = tree();
        let p = Lwm2mPath::resource(3, 0, 14);
        t.write(
            &p,
            &Node::Resource(ResourceValue::Single(Value::String("+02".into()))),
            WriteMode::Replace,
            false,
        )
        .unwrap();
        assert_eq!(t.get(&p), Some(&Value::String("+02".into())));
        let ro = Lwm2mPath::resource(3, 0, 0);
        let e = t
            .write(
                &ro,
                &Node::Resource(ResourceValue::Single(Value::String("x".into()))),
                WriteMode::Replace,
                false,
            )
            .unwrap_err();
        assert_eq!(e.coap_code(), (4, 5));
        // Bootstrap-Write ignores operations.
        t.write(
            &ro,
            &Node::Resource(ResourceValue::Single(Value::String("x".into()))),
            WriteMode::Replace,
            true,
        )
        .unwrap();
        assert_eq!(t.get(&ro), Some(&Value::String("x".into())));
    }

    #[test]
    fn create_delete_execute() {
        let mut t = tree();
        // Device is single-instance: no second instance.
        assert_eq!(
            t.create(ObjectId(3), None, Instance::new())
                .unwrap_err()
                .coap_code(),
            (4, 0)
        );
        assert!(t.check_execute(&Lwm2mPath::resource(3, 0, 4)).is_ok());
        assert_eq!(
            t.check_execute(&Lwm2mPath::resource(3, 0, 0))
                .unwrap_err()
                .coap_code(),
            (4, 5)
        );
        t.delete(&Lwm2mPath::instance(3, 0)).unwrap();
        assert_eq!(
            t.delete(&Lwm2mPath::instance(3, 0))
                .unwrap_err()
                .coap_code(),
            (4, 4)
        );
        assert_eq!(
            t.create(ObjectId(3), None, Instance::new()).unwrap(),
            InstanceId(0)
        );
    }

    #[test]
    fn execute_arguments() {
        // Core TS 1.1 §5.4.5 example: 0='ab',1
        let args = parse_execute_args("0='ab',1").unwrap();
        assert_eq!(args.len(), 2);
        assert_eq!(args[0].value.as_deref(), Some("ab"));
        assert_eq!(args[1], ExecuteArg { id: 1, value: None });
        assert_eq!(format_execute_args(&args), "0='ab',1");
        assert!(parse_execute_args("").unwrap().is_empty());
        for bad in ["a", "0=ab", "0='ab", "0,,1", "12", "0='a'x"] {
            assert!(parse_execute_args(bad).is_err(), "{bad}");
        }
        let msg = |s| parse_execute_args(s).unwrap_err().to_string();
        assert_eq!(
            msg("0=ab"),
            "execute arguments \"0=ab\": expected ' at byte 2"
        );
        assert_eq!(
            msg("0,,1"),
            "execute arguments \"0,,1\": expected a digit at byte 2"
        );
        assert_eq!(msg("12"), "execute arguments \"12\": expected , at byte 1");
        assert_eq!(
            msg("0='ab"),
            "execute arguments \"0='ab\": unterminated value"
        );
    }
}
