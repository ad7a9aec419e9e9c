//! The sans-IO CoAP exchange layer (placeholder).
