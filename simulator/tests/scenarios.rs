//! Every YAML file under `scenarios/` loads (design convention 10), and broken files give
//! errors that name the file, the line and the key.

use std::path::{Path, PathBuf};

use lwm2m_simulator::quirks::Quirk;
use lwm2m_simulator::scenarios::{SCENARIO_FOLDERS, load_all_scenario_files, yaml_files};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

#[test]
fn every_shipped_scenario_file_loads() {
    let dir = scenarios_dir();
    let loaded = match load_all_scenario_files(&dir) {
        Ok(s) => s,
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("scenario files do not load:\n{}", list.join("\n"));
        }
    };
    let files = yaml_files(&dir).unwrap();
    let counted = loaded.profiles.len()
        + loaded.quirk_packs.len()
        + loaded.networks.len()
        + loaded.skipped.len();
    assert_eq!(
        counted,
        files.len(),
        "every file is loaded or listed as skipped"
    );
    for skipped in &loaded.skipped {
        eprintln!(
            "skipped {} (this crate loads only {:?})",
            skipped.display(),
            SCENARIO_FOLDERS
        );
    }

    for name in ["minimal-1.0", "wakaama-like", "sensor-1.1", "device-1.2"] {
        assert!(loaded.profiles.contains_key(name), "profile {name}");
    }
    for name in ["home-nat", "sleepy-nb-iot", "lossy"] {
        assert!(loaded.networks.contains_key(name), "network {name}");
    }
    let wakaama = &loaded.profiles["wakaama-like"];
    assert_eq!(wakaama.effective_quirks(), &[Quirk::Pre10Location]);
    let test_object = &wakaama.objects[&1024.into()];
    let ids: Vec<u16> = test_object.instances.keys().map(|i| i.0).collect();
    assert_eq!(ids, [10, 11, 12]);
    // Every pack says where its deviations were seen.
    for (name, pack) in &loaded.quirk_packs {
        assert!(!pack.seen_in.trim().is_empty(), "{name}");
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    let parent = path.parent().expect("a file path has a parent");
    std::fs::create_dir_all(parent).expect("create the folder");
    std::fs::write(path, text).expect("write the file");
}

const PROFILE: &str = "\
name: NAME
lwm2m_version: \"1.0\"
lifetime: 60s
preferred_format: tlv
supported_formats: [tlv]
objects: {}
";

#[test]
fn broken_files_name_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        "quirks/ok.yaml",
        "description: d\nseen_in: s\nquirks: [ignore-accept]\n",
    );
    write(
        dir,
        "profiles/good.yaml",
        &PROFILE
            .replace("NAME", "good")
            .replace("objects", "quirks: [ok]\nobjects"),
    );
    write(
        dir,
        "profiles/bad-key.yaml",
        &PROFILE
            .replace("NAME", "bad-key")
            .replace("lifetime", "liftime"),
    );
    write(
        dir,
        "profiles/vendor/bad-type.yaml",
        &PROFILE.replace("NAME", "bad-type").replace("[tlv]", "tlv"),
    );
    write(
        dir,
        "profiles/bad-duration.yaml",
        &PROFILE.replace("NAME", "bad-duration").replace("60s", "60"),
    );
    write(
        dir,
        "profiles/unknown-quirk.yaml",
        &PROFILE
            .replace("NAME", "unknown-quirk")
            .replace("objects", "quirks: [ok, ignore-acept]\nobjects"),
    );
    write(
        dir,
        "networks/bad.yaml",
        "nat:\n  idle_timeout: 30s\n  idle: 1s\n",
    );
    write(
        dir,
        "quirks/ignore-accept.yaml",
        "description: d\nseen_in: s\nquirks: [ignore-accept]\n",
    );
    write(dir, "experiment.yaml", "anything: goes\n");

    let errors = load_all_scenario_files(dir).unwrap_err();
    let mut got: Vec<String> = errors
        .iter()
        .map(|e| e.to_string().replace(&dir.display().to_string(), "D"))
        .collect();
    got.sort();
    let want = [
        "D/networks/bad.yaml:3:3: nat: unknown field `idle`, expected `idle_timeout` or `inbound_refresh`",
        "D/profiles/bad-duration.yaml:3:11: lifetime: duration 60 has no unit (write e.g. \"60s\" or \"60ms\")",
        "D/profiles/bad-key.yaml:3:1: unknown field `liftime`",
        "D/profiles/unknown-quirk.yaml:6:1: quirks: unknown quirk or quirk pack `ignore-acept`",
        "D/profiles/vendor/bad-type.yaml:5:20: supported_formats: invalid type: string \"tlv\", expected a sequence",
        "D/quirks/ignore-accept.yaml:1:1: the pack name `ignore-accept` is a quirk's name; rename the file",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (g, w) in got.iter().zip(want) {
        assert!(g.starts_with(w), "\n got  {g}\n want {w}");
    }
}

#[test]
fn top_level_files_are_skipped_not_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "experiment.yaml", "not: checked here\n");
    write(tmp.path(), "fleets/big.yml", "neither: this\n");
    let loaded = load_all_scenario_files(tmp.path()).unwrap();
    assert_eq!(loaded.skipped.len(), 2);
    assert!(loaded.profiles.is_empty());
}

#[test]
fn duplicate_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "networks/a/x.yaml", "description: one\n");
    write(tmp.path(), "networks/b/x.yaml", "description: two\n");
    let errors = load_all_scenario_files(tmp.path()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains("name `x` is already used by"),
        "{}",
        errors[0]
    );
}
