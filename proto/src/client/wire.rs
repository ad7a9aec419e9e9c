//! Small wire helpers of the client: CoAP codes and the TLV rewrite of the
//! non-minimal-integer quirk.

use std::collections::BTreeSet;

use crate::coap::{MessageClass, Packet};
use crate::ids::{InstanceId, Lwm2mPath, ResourceId, ResourceInstanceId};
use crate::node::Node;
use crate::value::Value;

/// A response code as (class, detail), e.g. (2, 5) for 2.05.
pub(super) type Code = (u8, u8);

/// The packet's code as (class, detail).
pub(super) fn code_of(packet: &Packet) -> Code {
    let raw = u8::from(packet.header.code);
    (raw >> 5, raw & 0x1F)
}

/// The message class of a response code.
pub(super) fn class_of(code: Code) -> MessageClass {
    MessageClass::from((code.0 << 5) | (code.1 & 0x1F))
}

/// Re-encodes every Integer and Time value of a TLV payload (Core TS 1.1 §7.4.3) in 8 bytes
/// instead of the shortest form: the `non_minimal_tlv_integers` quirk. `node` at `target` is
/// what the payload encodes (TLV carries no types, the node says which values are
/// integers). Returns the bytes unchanged if they cannot be walked.
pub(super) fn widen_tlv_integers(bytes: &[u8], target: &Lwm2mPath, node: &Node) -> Vec<u8> {
    let ints: BTreeSet<Lwm2mPath> = node
        .to_records(target)
        .into_iter()
        .filter(|r| matches!(r.value, Some(Value::Integer(_) | Value::Time(_))))
        .map(|r| r.path)
        .collect();
    let mut out = Vec::with_capacity(bytes.len() + 16);
    match widen(bytes, target, &ints, &mut out, 0) {
        Some(()) => out,
        None => bytes.to_vec(),
    }
}

fn be(bytes: &[u8]) -> usize {
    bytes.iter().fold(0, |acc, b| (acc << 8) | usize::from(*b))
}

fn widen(
    bytes: &[u8],
    ctx: &Lwm2mPath,
    ints: &BTreeSet<Lwm2mPath>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Option<()> {
    if depth > 3 {
        return None;
    }
    let mut pos = 0;
    while pos < bytes.len() {
        let t = *bytes.get(pos)?;
        let kind = t >> 6;
        let id_len = if t & 0x20 != 0 { 2 } else { 1 };
        let len_len = usize::from((t >> 3) & 3);
        let mut p = pos + 1;
        let id = u16::try_from(be(bytes.get(p..p + id_len)?)).ok()?;
        p += id_len;
        let len = if len_len == 0 {
            usize::from(t & 7)
        } else {
            let l = be(bytes.get(p..p + len_len)?);
            p += len_len;
            l
        };
        let value = bytes.get(p..p.checked_add(len)?)?;
        pos = p + len;
        let path = match kind {
            0 => Lwm2mPath::Instance(ctx.object_id()?, InstanceId(id)),
            1 => Lwm2mPath::ResourceInstance(
                ctx.object_id()?,
                ctx.instance_id()?,
                ctx.resource_id()?,
                ResourceInstanceId(id),
            ),
            _ => Lwm2mPath::Resource(ctx.object_id()?, ctx.instance_id()?, ResourceId(id)),
        };
        let new: Vec<u8> = match kind {
            0 | 2 => {
                let mut inner = Vec::with_capacity(value.len() + 8);
                widen(value, &path, ints, &mut inner, depth + 1)?;
                inner
            }
            _ if ints.contains(&path) && matches!(value.len(), 1 | 2 | 4 | 8) => {
                let negative = value.first().is_some_and(|b| b & 0x80 != 0);
                let mut wide = vec![if negative { 0xFF } else { 0 }; 8 - value.len()];
                wide.extend_from_slice(value);
                wide
            }
            _ => value.to_vec(),
        };
        write_header(out, kind, id, new.len());
        out.extend_from_slice(&new);
    }
    Some(())
}

/// Writes a TLV type byte, identifier and length (Core TS 1.1 §7.4.3.1).
fn write_header(out: &mut Vec<u8>, kind: u8, id: u16, len: usize) {
    let mut t = kind << 6;
    if id > 0xFF {
        t |= 0x20;
    }
    let len_bytes = (len as u32).to_be_bytes();
    let len_field: &[u8] = if len < 8 {
        t |= len as u8;
        &[]
    } else if len <= 0xFF {
        t |= 0x08;
        &len_bytes[3..]
    } else if len <= 0xFFFF {
        t |= 0x10;
        &len_bytes[2..]
    } else {
        t |= 0x18;
        &len_bytes[1..]
    };
    out.push(t);
    if id > 0xFF {
        out.extend_from_slice(&id.to_be_bytes());
    } else {
        out.push(id as u8);
    }
    out.extend_from_slice(len_field);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::ResourceValue;

    #[test]
    fn tlv_integers_widened() {
        // Core TS 1.1 §7.4.3.2 style: resource 9 = 100 as C1 09 64.
        let node = Node::Instance(
            [
                (ResourceId(9), ResourceValue::Single(Value::Integer(100))),
                (
                    ResourceId(0),
                    ResourceValue::Single(Value::String("A".into())),
                ),
                (
                    ResourceId(11),
                    ResourceValue::Multiple([(ResourceInstanceId(0), Value::Integer(-1))].into()),
                ),
            ]
            .into(),
        );
        let target = Lwm2mPath::instance(3, 0);
        let bytes = crate::content::encode(crate::ContentFormat::Tlv, &target, &node).unwrap();
        let wide = widen_tlv_integers(&bytes, &target, &node);
        assert_eq!(
            hex::encode(&wide),
            // 0: "A"; 9: 8-byte 100; 11: multiple resource whose instance 0 is 8-byte -1
            "c10041c809080000000000000064880b0b480008ffffffffffffffff"
        );
        let registry = crate::registry::Registry::embedded();
        let device = registry.object(crate::ObjectId(3)).unwrap();
        let decoded =
            crate::content::decode(crate::ContentFormat::Tlv, &wide, &target, device).unwrap();
        assert_eq!(decoded.content, node);
        assert!(
            decoded
                .findings
                .iter()
                .any(|f| matches!(f, crate::Finding::NonMinimalInteger { .. }))
        );
        assert_eq!(widen_tlv_integers(&[0xC8], &target, &node), vec![0xC8]);
    }
}
