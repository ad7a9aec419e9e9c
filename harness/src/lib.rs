//! # lwm2m-harness: the library behind the `lwm2m-harness` command
//!
//! What it does today: recording (pcap files with synthesized IP/UDP headers that
//! Wireshark decodes; per-operation latency histograms as `.hgrm` and HdrHistogram logs),
//! reports (JSON, HTML, JUnit), the scenario [`runner`] (`lwm2m-harness run`), and the
//! Gherkin feature suite ([`bdd`]: cucumber World, in-process backend on a virtual clock,
//! step vocabulary, runner).
#![warn(missing_docs)]

pub mod accounts;
pub mod bdd;
pub mod fleet_metrics;
pub mod record;
pub mod report;
pub mod runner;
pub mod shipped;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use lwm2m_proto::registry::Registry;

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

/// Loads every `*.xml` file of `dir` (not its subfolders) into `registry`, in file name
/// order, each named by its path in errors and notes (`--ddf`, a features folder's
/// `objects/`). On error nothing is loaded. Returns the files read.
pub fn load_ddf_dir(registry: &mut Registry, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let io = |path: &Path, e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        let is_xml = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("xml"));
        if is_xml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let documents = files
        .iter()
        .map(|path| {
            let xml = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
            Ok((path.display().to_string(), xml))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    registry.load_documents(documents.iter().map(|(f, x)| (f.as_str(), x.as_str())))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use lwm2m_proto::ObjectId;

    use super::*;

    fn ddf(id: &str, version: &str) -> String {
        format!(
            "<LWM2M><Object ObjectType=\"MODefinition\"><Name>T</Name><ObjectID>{id}</ObjectID>\
             <LWM2MVersion>{version}</LWM2MVersion><ObjectVersion>{version}</ObjectVersion>\
             <MultipleInstances>Multiple</MultipleInstances><Mandatory>Optional</Mandatory>\
             <Resources></Resources></Object></LWM2M>"
        )
    }

    #[test]
    fn ddf_dir_is_read_in_name_order_xml_files_only() {
        let dir = std::env::temp_dir().join(format!("lwm2m-ddf-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub.xml")).unwrap();
        std::fs::write(dir.join("b.xml"), ddf("42", "1.1")).unwrap();
        std::fs::write(dir.join("a.XML"), ddf("42", "1.0")).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a DDF file").unwrap();
        let mut r = Registry::empty();
        let files = load_ddf_dir(&mut r, &dir).unwrap();
        assert_eq!(files, [dir.join("a.XML"), dir.join("b.xml")]);
        let a = dir.join("a.XML").display().to_string();
        assert_eq!(r.source(ObjectId(42), "1.0"), Some(a.as_str()));
        assert_eq!(r.object(ObjectId(42)).unwrap().version, "1.1");

        std::fs::write(dir.join("c.xml"), ddf("42", "1.0")).unwrap();
        let mut r = Registry::empty();
        let err = load_ddf_dir(&mut r, &dir).unwrap_err().to_string();
        let c = dir.join("c.xml").display().to_string();
        assert!(err.starts_with(&format!("{c}:1: object 42")), "{err}");
        assert!(r.objects().next().is_none());

        std::fs::remove_dir_all(&dir).unwrap();
        let err = load_ddf_dir(&mut r, &dir).unwrap_err().to_string();
        assert!(err.starts_with(&dir.display().to_string()), "{err}");
    }
}
