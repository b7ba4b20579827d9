//! Tool names as providers accept them (`^[a-zA-Z0-9_-]{1,64}$`) and back: Maestro's
//! tools are `plugin.tool`, so each request maps the names it offers and reports the
//! calls under the original names.

use std::collections::HashMap;

use maestro_core::llm::ToolDefinition;

/// Longest tool name providers accept.
const MAX_NAME: usize = 64;

/// One request's mapping between Maestro's tool names and the names sent upstream.
#[derive(Debug, Default, Clone)]
pub(crate) struct ToolNames {
    to_wire: HashMap<String, String>,
    from_wire: HashMap<String, String>,
}

impl ToolNames {
    /// The mapping for the tools of a request (unique wire names, in order).
    pub(crate) fn new(tools: &[ToolDefinition]) -> Self {
        let mut names = Self::default();
        for tool in tools {
            if names.to_wire.contains_key(&tool.name) {
                continue;
            }
            let base = sanitize(&tool.name);
            let mut wire = base.clone();
            let mut n = 2;
            while names.from_wire.contains_key(&wire) {
                let suffix = format!("_{n}");
                let keep = base.len().min(MAX_NAME - suffix.len());
                wire = format!("{}{suffix}", &base[..keep]);
                n += 1;
            }
            names.to_wire.insert(tool.name.clone(), wire.clone());
            names.from_wire.insert(wire, tool.name.clone());
        }
        names
    }

    /// The name sent upstream for `name`.
    pub(crate) fn wire(&self, name: &str) -> String {
        self.to_wire.get(name).cloned().unwrap_or_else(|| sanitize(name))
    }

    /// The original name of a name the model used (unknown names pass unchanged).
    pub(crate) fn original(&self, wire: &str) -> String {
        self.from_wire.get(wire).cloned().unwrap_or_else(|| wire.to_owned())
    }
}

/// `name` with every character outside `[a-zA-Z0-9_-]` replaced by `_`, cut to 64.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .take(MAX_NAME)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> ToolDefinition {
        ToolDefinition { name: name.into(), description: String::new(), parameters: serde_json::json!({}) }
    }

    #[test]
    fn dotted_names_map_to_safe_names_and_back() {
        let names = ToolNames::new(&[tool("calc.add"), tool("calc_add"), tool("web.fetch")]);
        assert_eq!(names.wire("calc.add"), "calc_add");
        assert_eq!(names.wire("calc_add"), "calc_add_2", "a collision gets a suffix");
        assert_eq!(names.original("calc_add"), "calc.add");
        assert_eq!(names.original("calc_add_2"), "calc_add");
        assert_eq!(names.original("web_fetch"), "web.fetch");
        assert_eq!(names.original("invented"), "invented");
    }

    #[test]
    fn long_names_are_cut_and_stay_unique() {
        let long = "p".repeat(40) + "." + &"t".repeat(40);
        let other = "p".repeat(40) + "_" + &"t".repeat(40);
        let names = ToolNames::new(&[tool(&long), tool(&other)]);
        let (a, b) = (names.wire(&long), names.wire(&other));
        assert!(a.len() <= 64 && b.len() <= 64 && a != b, "{a} {b}");
        assert_eq!(names.original(&b), other);
    }
}
