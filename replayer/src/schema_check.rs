//! Checking a report against the JSON Schema embedded with it.

use serde_json::Value;
use std::sync::OnceLock;

/// A JSON Schema embedded in the binary, compiled on first use.
pub(crate) struct EmbeddedSchema {
    /// What it describes, for the error when it does not compile (`coverage report`, …).
    what: &'static str,
    text: &'static str,
    compiled: OnceLock<Option<jsonschema::Validator>>,
}

impl EmbeddedSchema {
    pub(crate) const fn new(what: &'static str, text: &'static str) -> Self {
        Self {
            what,
            text,
            compiled: OnceLock::new(),
        }
    }

    /// Validates `value`; every error, each with its JSON pointer.
    pub(crate) fn validate(&self, value: &Value) -> Result<(), Vec<String>> {
        let compiled = self.compiled.get_or_init(|| {
            let schema: Value = serde_json::from_str(self.text).ok()?;
            jsonschema::validator_for(&schema).ok()
        });
        let Some(v) = compiled else {
            return Err(vec![format!(
                "the embedded {} schema does not compile",
                self.what
            )]);
        };
        let errors: Vec<String> = v
            .iter_errors(value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
