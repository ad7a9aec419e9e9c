//! The object registry: DDF XML loading (placeholder).
