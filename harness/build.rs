//! Embeds the shipped `scenarios/` and `features/` folders (profiles, quirk packs,
//! networks, scenarios, feature files, object definitions, device descriptions) into the
//! binary: `OUT_DIR/shipped.rs` lists each file's path under the workspace and its bytes
//! (`include_bytes!`), for `lwm2m_harness::shipped`. Also records the git revision the
//! binary is built from, for reports written outside a checkout.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest
        .parent()
        .expect("the harness is in the workspace")
        .to_owned();
    let mut found = Vec::new();
    for folder in ["scenarios", "features"] {
        let dir = workspace.join(folder);
        println!("cargo:rerun-if-changed={}", dir.display());
        files(&dir, &mut found);
    }
    found.sort();
    let mut table = String::from("/// Shipped files: path under the workspace, bytes.\n");
    table.push_str("pub static FILES: &[(&str, &[u8])] = &[\n");
    for path in &found {
        let relative = path
            .strip_prefix(&workspace)
            .expect("under the workspace")
            .to_string_lossy()
            .replace('\\', "/");
        // Folders change when files come and go; files when they change.
        println!("cargo:rerun-if-changed={}", path.display());
        if let Some(parent) = path.parent() {
            println!("cargo:rerun-if-changed={}", parent.display());
        }
        table.push_str(&format!(
            "    ({relative:?}, include_bytes!({:?})),\n",
            path
        ));
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("shipped.rs");
    std::fs::write(out, table).expect("OUT_DIR is writable");

    let revision = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&workspace)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    // As of the build script's last run (it reruns when the shipped files change): the
    // report asks git in the source folder first, and takes this only without one.
    println!("cargo:rustc-env=LWM2M_HARNESS_BUILD_GIT_REVISION={revision}");
}
