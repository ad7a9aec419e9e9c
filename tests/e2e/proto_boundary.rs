//! The core crate must stay sans-IO: no tokio, no socket or clock crates in its tree.

use std::process::Command;

#[test]
fn proto_has_no_runtime_or_socket_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "lwm2m-proto",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"lwm2m-proto"), "unexpected tree: {tree}");
    for banned in [
        "tokio",
        "mio",
        "socket2",
        "async-std",
        "smol",
        "quinn-udp",
        "chrono",
        "time",
    ] {
        assert!(
            !crates.contains(&banned),
            "lwm2m-proto must stay sans-IO but depends on {banned}:\n{tree}"
        );
    }
}
