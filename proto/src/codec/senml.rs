//! Shared SenML record resolution (RFC 8428) for the JSON and CBOR forms. (placeholder)
