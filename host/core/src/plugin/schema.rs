//! A small JSON Schema checker for structured tool results.
//!
//! A tool that declares an output schema promises results of that shape, and clients
//! rely on it (MCP requires `structuredContent` to conform). This checks the keywords
//! tool schemas use in practice — `type`, `enum`, `const`, `properties`, `required`,
//! `additionalProperties`, `items`/`prefixItems`, the length, size and numeric bounds,
//! `allOf`/`anyOf`/`oneOf`/`not`, and local `$ref`s (`#/$defs/…`, as schemars writes
//! them) — and ignores the others (formats, patterns, conditionals), so it may accept
//! a value a full validator refuses, never the reverse for the keywords it knows. A
//! full validator crate would cost more build time than the rest of the core.
//!
//! Checking is bounded: a schema that needs more than [`MAX_STEPS`] checks or nests
//! `$ref`s deeper than [`MAX_DEPTH`] fails instead of running on.

use serde_json::{Map, Value};

/// Most checks one validation may take (schemas are at most 64 KiB, but `anyOf` over
/// nested `$ref`s can still multiply).
pub const MAX_STEPS: usize = 200_000;
/// Deepest nesting of schemas one validation may follow.
pub const MAX_DEPTH: usize = 256;

/// The first place a value does not satisfy a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {}: {reason}", if path.is_empty() { "the root" } else { path.as_str() })]
pub struct Violation {
    /// JSON Pointer to the offending value (empty for the root).
    pub path: String,
    /// What is wrong, e.g. `expected string, found number`.
    pub reason: String,
}

/// Checks `value` against `schema`, reporting the first violation.
pub fn validate(schema: &Value, value: &Value) -> Result<(), Violation> {
    let mut checker = Checker { root: schema, steps: 0, exhausted: false, path: Vec::new() };
    let result = checker.check(schema, value, 0);
    // Once exhausted, every further check fails, and a failure inside `anyOf` or `not`
    // may have been taken for an answer: the only honest result is this one.
    if checker.exhausted {
        return Err(Violation { path: String::new(), reason: "the output schema is too costly to check".to_owned() });
    }
    result
}

enum Segment<'v> {
    Key(&'v str),
    Index(usize),
}

struct Checker<'s, 'v> {
    root: &'s Value,
    steps: usize,
    exhausted: bool,
    path: Vec<Segment<'v>>,
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match (name, value) {
        ("integer", Value::Number(n)) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        ("number", Value::Number(_)) => true,
        (name, value) => kind(value) == name,
    }
}

impl<'s, 'v> Checker<'s, 'v> {
    fn fail(&self, reason: impl Into<String>) -> Violation {
        let mut path = String::new();
        for segment in &self.path {
            path.push('/');
            match segment {
                Segment::Key(key) => path.push_str(&key.replace('~', "~0").replace('/', "~1")),
                Segment::Index(i) => path.push_str(&i.to_string()),
            }
        }
        Violation { path, reason: reason.into() }
    }

    fn child(
        &mut self,
        segment: Segment<'v>,
        schema: &'s Value,
        value: &'v Value,
        depth: usize,
    ) -> Result<(), Violation> {
        self.path.push(segment);
        let result = self.check(schema, value, depth + 1);
        self.path.pop();
        result
    }

    fn check(&mut self, schema: &'s Value, value: &'v Value, depth: usize) -> Result<(), Violation> {
        self.steps += 1;
        if self.exhausted || self.steps > MAX_STEPS || depth > MAX_DEPTH {
            self.exhausted = true;
            return Err(self.fail("the output schema is too costly to check"));
        }
        let schema = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return Err(self.fail("no value is allowed here")),
            Value::Object(schema) => schema,
            _ => return Ok(()),
        };
        if let Some(target) = schema.get("$ref").and_then(Value::as_str).and_then(|r| self.resolve(r)) {
            self.check(target, value, depth + 1)?;
        }
        self.check_type(schema, value)?;
        if let Some(Value::Array(allowed)) = schema.get("enum")
            && !allowed.contains(value)
        {
            return Err(self.fail("not one of the values the schema's enum allows"));
        }
        if let Some(expected) = schema.get("const")
            && expected != value
        {
            return Err(self.fail(format!("expected the constant {expected}")));
        }
        match value {
            Value::Number(n) => self.check_number(schema, n.as_f64().unwrap_or(f64::NAN))?,
            Value::String(s) => self.check_length(schema, "minLength", "maxLength", s.chars().count(), "characters")?,
            Value::Array(items) => self.check_array(schema, items, depth)?,
            Value::Object(map) => self.check_object(schema, map, depth)?,
            Value::Null | Value::Bool(_) => {}
        }
        self.check_combinators(schema, value, depth)
    }

    /// A local reference: `#` or a JSON Pointer into the root schema. Others (remote
    /// documents, anchors) are not followed.
    fn resolve(&self, reference: &str) -> Option<&'s Value> {
        let pointer = reference.strip_prefix('#')?;
        self.root.pointer(pointer)
    }

    fn check_type(&self, schema: &Map<String, Value>, value: &Value) -> Result<(), Violation> {
        let matches = match schema.get("type") {
            Some(Value::String(name)) => has_type(value, name),
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).any(|name| has_type(value, name)),
            _ => return Ok(()),
        };
        if matches {
            return Ok(());
        }
        let expected = match &schema["type"] {
            Value::String(name) => name.clone(),
            other => other.as_array().map_or_else(String::new, |names| {
                names.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or ")
            }),
        };
        Err(self.fail(format!("expected {expected}, found {}", kind(value))))
    }

    fn check_number(&self, schema: &Map<String, Value>, n: f64) -> Result<(), Violation> {
        let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
        if let Some(min) = bound("minimum")
            && n < min
        {
            return Err(self.fail(format!("{n} is less than the minimum {min}")));
        }
        if let Some(max) = bound("maximum")
            && n > max
        {
            return Err(self.fail(format!("{n} is more than the maximum {max}")));
        }
        if let Some(min) = bound("exclusiveMinimum")
            && n <= min
        {
            return Err(self.fail(format!("{n} is not more than the exclusive minimum {min}")));
        }
        if let Some(max) = bound("exclusiveMaximum")
            && n >= max
        {
            return Err(self.fail(format!("{n} is not less than the exclusive maximum {max}")));
        }
        Ok(())
    }

    fn check_length(
        &self,
        schema: &Map<String, Value>,
        min_key: &str,
        max_key: &str,
        len: usize,
        unit: &str,
    ) -> Result<(), Violation> {
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        if let Some(min) = schema.get(min_key).and_then(Value::as_u64)
            && len64 < min
        {
            return Err(self.fail(format!("has {len} {unit}, fewer than the {min_key} {min}")));
        }
        if let Some(max) = schema.get(max_key).and_then(Value::as_u64)
            && len64 > max
        {
            return Err(self.fail(format!("has {len} {unit}, more than the {max_key} {max}")));
        }
        Ok(())
    }

    fn check_array(
        &mut self,
        schema: &'s Map<String, Value>,
        items: &'v [Value],
        depth: usize,
    ) -> Result<(), Violation> {
        self.check_length(schema, "minItems", "maxItems", items.len(), "items")?;
        // `prefixItems` (2020-12) or an array-valued `items` (older drafts) check by
        // position; then `items` (2020-12) or `additionalItems` check the rest.
        let (positional, rest) = match (schema.get("prefixItems"), schema.get("items")) {
            (Some(Value::Array(prefix)), rest) => (prefix.as_slice(), rest),
            (_, Some(Value::Array(prefix))) => (prefix.as_slice(), schema.get("additionalItems")),
            (_, rest) => (&[][..], rest),
        };
        for (i, item) in items.iter().enumerate() {
            let item_schema = match positional.get(i) {
                Some(s) => s,
                None => match rest {
                    Some(s) => s,
                    None => break,
                },
            };
            self.child(Segment::Index(i), item_schema, item, depth)?;
        }
        Ok(())
    }

    fn check_object(
        &mut self,
        schema: &'s Map<String, Value>,
        map: &'v Map<String, Value>,
        depth: usize,
    ) -> Result<(), Violation> {
        self.check_length(schema, "minProperties", "maxProperties", map.len(), "properties")?;
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(name) {
                    return Err(self.fail(format!("missing the required property `{name}`")));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        // Without a regex engine, `patternProperties` cannot be checked; a schema that
        // has them has its `additionalProperties` skipped rather than misapplied.
        let additional =
            if schema.contains_key("patternProperties") { None } else { schema.get("additionalProperties") };
        for (key, child) in map {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => self.child(Segment::Key(key), property, child, depth)?,
                None => match additional {
                    Some(Value::Bool(false)) => {
                        return Err(self.fail(format!("the property `{key}` is not allowed")));
                    }
                    Some(extra) => self.child(Segment::Key(key), extra, child, depth)?,
                    None => {}
                },
            }
        }
        Ok(())
    }

    fn check_combinators(
        &mut self,
        schema: &'s Map<String, Value>,
        value: &'v Value,
        depth: usize,
    ) -> Result<(), Violation> {
        if let Some(Value::Array(all)) = schema.get("allOf") {
            for branch in all {
                self.check(branch, value, depth + 1)?;
            }
        }
        if let Some(Value::Array(any)) = schema.get("anyOf") {
            let mut first = None;
            for branch in any {
                if self.exhausted {
                    break;
                }
                match self.check(branch, value, depth + 1) {
                    Ok(()) => {
                        first = None;
                        break;
                    }
                    Err(violation) => {
                        first.get_or_insert(violation);
                    }
                }
            }
            if let Some(violation) = first {
                return Err(self.fail(format!("matches none of the anyOf schemas (first: {violation})")));
            }
        }
        if let Some(Value::Array(one)) = schema.get("oneOf") {
            let mut matched = 0;
            for branch in one {
                if self.check(branch, value, depth + 1).is_ok() {
                    matched += 1;
                }
                if self.exhausted {
                    return Err(self.fail("the output schema is too costly to check"));
                }
            }
            if matched != 1 {
                return Err(self.fail(format!("matches {matched} of the oneOf schemas, not exactly one")));
            }
        }
        if let Some(not) = schema.get("not")
            && self.check(not, value, depth + 1).is_ok()
        {
            return Err(self.fail("matches the schema under `not`"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reason(schema: Value, value: Value) -> String {
        validate(&schema, &value).expect_err("violates").to_string()
    }

    #[test]
    fn accepts_values_that_fit() {
        let schema = json!({
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": { "type": "integer", "minimum": 100, "maximum": 599 },
                "tags": { "type": "array", "items": { "type": "string", "maxLength": 8 }, "maxItems": 3 },
                "kind": { "enum": ["a", "b"] },
                "note": { "type": ["string", "null"] },
                "inner": { "$ref": "#/$defs/Inner" }
            },
            "additionalProperties": false,
            "$defs": { "Inner": { "type": "object", "properties": { "n": { "type": "number" } } } }
        });
        let value = json!({ "status": 200, "tags": ["x"], "kind": "a", "note": null, "inner": { "n": 1.5 } });
        validate(&schema, &value).expect("fits");
        validate(&json!({}), &json!([1, "two"])).expect("an empty schema allows anything");
        validate(&json!({ "type": "integer" }), &json!(3.0)).expect("3.0 is an integer");
    }

    #[test]
    fn names_the_first_violation_with_its_path() {
        let schema = json!({
            "type": "object",
            "properties": { "items": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" } } } } }
        });
        assert_eq!(
            reason(schema, json!({ "items": [{ "name": "ok" }, { "name": 7 }] })),
            "at /items/1/name: expected string, found integer"
        );
        assert_eq!(reason(json!({ "type": "object" }), json!([])), "at the root: expected object, found array");
        assert_eq!(
            reason(json!({ "required": ["a"], "type": "object" }), json!({})),
            "at the root: missing the required property `a`"
        );
        assert_eq!(
            reason(json!({ "properties": {}, "additionalProperties": false }), json!({ "x/y": 1 })),
            "at the root: the property `x/y` is not allowed"
        );
        assert!(reason(json!({ "enum": [1, 2] }), json!(3)).contains("enum"));
        assert!(reason(json!({ "minimum": 0 }), json!(-1)).contains("less than the minimum"));
        assert!(reason(json!({ "exclusiveMaximum": 1 }), json!(1)).contains("exclusive maximum"));
        assert!(reason(json!({ "maxLength": 2 }), json!("abc")).contains("maxLength"));
        assert!(reason(json!({ "minItems": 1 }), json!([])).contains("minItems"));
        assert!(reason(json!({ "const": "v1" }), json!("v2")).contains("constant"));
        assert!(reason(json!({ "not": { "type": "null" } }), json!(null)).contains("not"));
        assert!(reason(json!({ "oneOf": [{ "type": "number" }, { "type": "integer" }] }), json!(1)).contains("oneOf"));
        assert!(reason(json!({ "anyOf": [{ "type": "string" }, { "type": "null" }] }), json!(1)).contains("anyOf"));
        assert!(reason(json!(false), json!(1)).contains("no value"));
    }

    #[test]
    fn a_self_referencing_schema_stops_instead_of_running_on() {
        let looping = json!({ "$ref": "#" });
        assert!(reason(looping, json!(1)).contains("too costly"));
        // anyOf over nested refs: exponential without the step budget.
        let mut defs = Map::new();
        for i in 0..40 {
            let next = format!("#/$defs/d{}", i + 1);
            defs.insert(format!("d{i}"), json!({ "anyOf": [{ "$ref": next }, { "$ref": next }] }));
        }
        defs.insert("d40".into(), json!({ "type": "string" }));
        let schema = json!({ "$ref": "#/$defs/d0", "$defs": defs.clone() });
        assert!(reason(schema, json!(1)).contains("too costly"));
        let negated = json!({ "not": { "$ref": "#/$defs/d0" }, "$defs": defs });
        assert!(reason(negated, json!(1)).contains("too costly"), "an exhausted check is never taken as a match");
    }
}
