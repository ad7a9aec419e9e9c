//! The step vocabulary, one file per domain concept (design convention 8). Steps are
//! registered with cucumber's attribute macros; this module only gathers the files.

pub mod assertions;
pub mod bootstrap;
pub mod clients;
pub mod device_management;
pub mod network;
pub mod observe;
pub mod registration;
pub mod security;
pub mod send;
pub mod servers;

#[cfg(test)]
mod tests {
    /// Every step expression of the step files, from their source.
    fn expressions() -> Vec<String> {
        let sources = [
            include_str!("servers.rs"),
            include_str!("clients.rs"),
            include_str!("registration.rs"),
            include_str!("bootstrap.rs"),
            include_str!("device_management.rs"),
            include_str!("observe.rs"),
            include_str!("send.rs"),
            include_str!("security.rs"),
            include_str!("network.rs"),
            include_str!("assertions.rs"),
        ];
        let mut out = Vec::new();
        for source in sources {
            for line in source.lines() {
                let line = line.trim();
                let Some(rest) = ["#[given(", "#[when(", "#[then("]
                    .iter()
                    .find_map(|p| line.strip_prefix(p))
                else {
                    continue;
                };
                let rest = rest.strip_prefix("expr = ").unwrap_or(rest);
                let text = rest.trim_end_matches(")]").trim_matches('"');
                out.push(text.to_owned());
            }
        }
        out
    }

    #[test]
    fn the_readme_lists_every_step() {
        let readme = include_str!("../../../../features/README.md");
        let steps = expressions();
        assert!(steps.len() > 100, "{}", steps.len());
        for step in steps {
            assert!(
                readme.contains(&format!(" {step}`")),
                "features/README.md lacks {step:?}"
            );
        }
    }
}
