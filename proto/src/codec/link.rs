//! CoRE Link Format (RFC 6690) as LwM2M uses it. (placeholder)
