//! `cucumber/cucumber.json` as strict consumers read it. Cucumber's JSON writer leaves out
//! what the Cucumber JSON schemas require: a feature's `id`, `line` and `description`, an
//! element's `description`, a hook's `match`; and it writes statuses (`ambiguous`) and keys
//! (`hidden`, `embeddings`) those schemas do not have. [`Gherkin`] notes what the feature
//! files say while the suite runs, and [`complete`] rewrites the writer's file with it, so
//! that the official `@cucumber/cucumber-json-converter` (npm) accepts it (checked in
//! `harness/tests/report_formats.rs`).

use std::collections::BTreeMap;

use cucumber::gherkin;
use serde_json::{Map, Value};

/// What the writer's JSON lacks, from the parsed feature files.
#[derive(Debug, Default, Clone)]
pub struct Gherkin {
    features: Vec<FeatureText>,
}

#[derive(Debug, Clone)]
struct FeatureText {
    /// The feature file, as parsed (absolute or relative to where the run started).
    path: String,
    name: String,
    line: usize,
    description: String,
    /// The description of each scenario and background, by its line.
    elements: BTreeMap<usize, String>,
}

fn text(description: Option<&String>) -> String {
    description.map_or_else(String::new, |d| d.trim().to_owned())
}

impl Gherkin {
    /// Notes a feature, the rule and the scenario about to run.
    pub fn note(
        &mut self,
        feature: &gherkin::Feature,
        rule: Option<&gherkin::Rule>,
        scenario: &gherkin::Scenario,
    ) {
        let path = feature
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let index = match self
            .features
            .iter()
            .position(|f| f.path == path && f.name == feature.name)
        {
            Some(i) => i,
            None => {
                self.features.push(FeatureText {
                    path,
                    name: feature.name.clone(),
                    line: feature.position.line,
                    description: text(feature.description.as_ref()),
                    elements: BTreeMap::new(),
                });
                self.features.len() - 1
            }
        };
        let f = &mut self.features[index];
        let backgrounds = feature
            .background
            .iter()
            .chain(rule.and_then(|r| r.background.as_ref()));
        for b in backgrounds {
            f.elements
                .insert(b.position.line, text(b.description.as_ref()));
        }
        f.elements
            .insert(scenario.position.line, text(scenario.description.as_ref()));
    }

    /// The noted feature the writer's `uri` and `name` stand for.
    fn feature(&self, uri: &str, name: &str) -> Option<&FeatureText> {
        let uri = uri.replace('\\', "/");
        self.features
            .iter()
            .filter(|f| f.name == name)
            .find(|f| !uri.is_empty() && f.path.replace('\\', "/").ends_with(&uri))
            .or_else(|| self.features.iter().find(|f| f.name == name))
    }
}

/// A lowercase, dash-separated id of a name, as Cucumber makes feature ids.
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            s.push(c);
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_end_matches('-').to_owned()
}

/// The writer's `cucumber.json` (`json`) with what strict consumers require: every hook's
/// `match` points at `hook_location`, where the suite installs its Before and After hooks.
pub fn complete(json: &str, gherkin: &Gherkin, hook_location: &str) -> serde_json::Result<String> {
    let mut features: Vec<Value> = serde_json::from_str(json)?;
    for feature in &mut features {
        let Some(f) = feature.as_object_mut() else {
            continue;
        };
        let str_of = |f: &Map<String, Value>, k: &str| {
            f.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
        };
        let (uri, name) = (str_of(f, "uri"), str_of(f, "name"));
        let noted = gherkin.feature(&uri, &name);
        f.entry("uri").or_insert_with(|| Value::from(uri.clone()));
        // The elements' ids start with the feature's (`feature-slug/scenario-slug`).
        let id = f
            .get("elements")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
            .and_then(|e| e.get("id"))
            .and_then(Value::as_str)
            .and_then(|id| id.split_once('/'))
            .map_or_else(|| slug(&name), |(feature, _)| feature.to_owned());
        f.insert("id".into(), id.into());
        f.insert("line".into(), noted.map_or(1, |n| n.line).into());
        f.insert(
            "description".into(),
            noted
                .map_or_else(String::new, |n| n.description.clone())
                .into(),
        );
        let Some(elements) = f.get_mut("elements").and_then(Value::as_array_mut) else {
            continue;
        };
        for element in elements.iter_mut().filter_map(Value::as_object_mut) {
            let line = element
                .get("line")
                .and_then(Value::as_u64)
                .and_then(|l| usize::try_from(l).ok());
            let description = noted
                .zip(line)
                .and_then(|(n, l)| n.elements.get(&l))
                .cloned()
                .unwrap_or_default();
            element.insert("description".into(), description.into());
            for hooks in ["before", "after"] {
                for hook in element
                    .get_mut(hooks)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object_mut)
                {
                    hook.insert(
                        "match".into(),
                        serde_json::json!({ "location": hook_location }),
                    );
                    hook.remove("embeddings");
                    strict_result(hook);
                }
            }
            for step in element
                .get_mut("steps")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object_mut)
            {
                step.remove("hidden");
                step.remove("embeddings");
                strict_result(step);
            }
        }
    }
    serde_json::to_string_pretty(&features)
}

/// An `ambiguous` step (several step definitions matched) is `failed` in the schemas'
/// statuses; its error message says why.
fn strict_result(holder: &mut Map<String, Value>) {
    if let Some(result) = holder.get_mut("result").and_then(Value::as_object_mut)
        && result.get("status").and_then(Value::as_str) == Some("ambiguous")
    {
        result.insert("status".into(), "failed".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            slug("Read and Discover (ETS int-201)"),
            "read-and-discover-ets-int-201"
        );
        assert_eq!(slug("  x  "), "x");
    }

    #[test]
    fn completes_what_the_writer_leaves_out() {
        let json = r#"[{"uri":"features/a.feature","keyword":"Feature","name":"A","tags":[],
            "elements":[{"keyword":"Scenario","type":"scenario","id":"a/s","line":7,"name":"S",
            "tags":[],"before":[{"result":{"status":"passed","duration":1}}],
            "steps":[{"keyword":"When ","line":8,"name":"x","result":{"status":"ambiguous",
            "duration":1,"error_message":"two"}}]}]}]"#;
        let mut g = Gherkin::default();
        g.features.push(FeatureText {
            path: "/w/features/a.feature".into(),
            name: "A".into(),
            line: 2,
            description: "About A.".into(),
            elements: [(7, "About S.".to_owned())].into(),
        });
        let out: Value = serde_json::from_str(&complete(json, &g, "run.rs:1").unwrap()).unwrap();
        let f = &out[0];
        assert_eq!(f["id"], "a");
        assert_eq!(f["line"], 2);
        assert_eq!(f["description"], "About A.");
        let e = &f["elements"][0];
        assert_eq!(e["description"], "About S.");
        assert_eq!(e["before"][0]["match"]["location"], "run.rs:1");
        assert_eq!(e["steps"][0]["result"]["status"], "failed");
    }
}
