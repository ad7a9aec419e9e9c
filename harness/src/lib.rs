//! # lwm2m-harness: the library behind the `lwm2m-harness` command
//!
//! What it does today: recording (pcap files with synthesized IP/UDP headers that
//! Wireshark decodes; per-operation latency histograms as `.hgrm` and HdrHistogram logs),
//! reports (JSON, HTML, JUnit), the scenario [`runner`] (`lwm2m-harness run`), and the
//! Gherkin feature suite ([`bdd`]: cucumber World, in-process backend on a virtual clock,
//! step vocabulary, runner).
#![warn(missing_docs)]

pub mod bdd;
pub mod fleet_metrics;
pub mod record;
pub mod report;
pub mod runner;
pub mod shipped;

use std::path::Path;

use anyhow::Context as _;

/// The DER blocks of a PEM file labelled `label` (any of them when a file holds several
/// kinds), or the file itself when it is DER: how certificates and keys are read (`serve
/// --cert`, `simulate --cert-ca`, a scenario's `security.ca`).
pub fn der_blocks(path: &Path, labels: &[&str]) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Ok(vec![bytes]);
    }
    let blocks = pem::parse_many(&bytes).with_context(|| format!("{}: bad PEM", path.display()))?;
    let found: Vec<Vec<u8>> = blocks
        .iter()
        .filter(|b| labels.contains(&b.tag()))
        .map(|b| b.contents().to_vec())
        .collect();
    if found.is_empty() {
        let tags: Vec<&str> = blocks.iter().map(pem::Pem::tag).collect();
        anyhow::bail!(
            "{}: no {} block (found {tags:?}){}",
            path.display(),
            labels.join(" or "),
            if tags.contains(&"EC PRIVATE KEY") {
                "; convert the key with `openssl pkcs8 -topk8 -nocrypt`"
            } else {
                ""
            }
        );
    }
    Ok(found)
}

/// The first block [`der_blocks`] finds (a private key, a CA certificate).
pub fn der_block(path: &Path, labels: &[&str]) -> anyhow::Result<Vec<u8>> {
    let mut blocks = der_blocks(path, labels)?;
    // `der_blocks` finds at least one or fails.
    Ok(blocks.swap_remove(0))
}

/// A DTLS certificate configuration from files (PEM or DER): `chain` (end-entity
/// certificate first), its PKCS#8 `key`, and the trust anchors `ca` for the peer's.
pub fn certificate_config(
    chain: &Path,
    key: &Path,
    ca: &Path,
) -> anyhow::Result<lwm2m_dtls::CertificateConfig> {
    Ok(lwm2m_dtls::CertificateConfig {
        chain: der_blocks(chain, &["CERTIFICATE"])?,
        private_key: der_block(key, &["PRIVATE KEY"])?,
        trust_anchors: der_blocks(ca, &["CERTIFICATE"])?,
    })
}
