//! The shipped config file and golden files for config errors (`BLESS=1` rewrites them).

use std::path::{Path, PathBuf};

use maestro_host::config::{Config, Env, Overrides, RawConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn shipped_config_parses_to_the_defaults() {
    let path = root().join("config/maestro.toml");
    let raw = RawConfig::read(&path).expect("config/maestro.toml parses");
    let shipped = Config::from_raw(raw, &Env::new(), &Overrides::default()).expect("valid");
    let defaults = Config::load(None, &Env::new(), &Overrides::default()).expect("defaults");
    assert_eq!(shipped, defaults, "config/maestro.toml must document the defaults exactly");
}

#[test]
fn shipped_config_documents_every_environment_variable() {
    let text = std::fs::read_to_string(root().join("config/maestro.toml")).expect("read");
    for (var, _) in maestro_host::config::ENV_VARS {
        assert!(text.contains(var), "config/maestro.toml does not mention {var}");
    }
}

#[test]
fn config_errors_match_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/golden/config");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).expect("golden dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        cases += 1;
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read case");
        let result = RawConfig::parse(&text, Path::new(&name))
            .and_then(|raw| Config::from_raw(raw, &Env::new(), &Overrides::default()));
        let actual = match result {
            Ok(config) => panic!("{name} should be rejected, got {config:?}"),
            Err(err) => format!("{err}\n"),
        };
        let expected_path = path.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &actual).expect("bless");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("missing {}; run with BLESS=1", expected_path.display()));
        assert_eq!(actual, expected, "{name} (run with BLESS=1 to accept)");
    }
    assert!(cases >= 4, "golden cases found: {cases}");
}

/// The commented `[llm]` examples of the shipped config, uncommented.
fn shipped_llm_examples() -> String {
    let text = std::fs::read_to_string(root().join("config/maestro.toml")).expect("read");
    let start = text.find("\n[llm]\n").expect("an [llm] section");
    let section = &text[start + 1..];
    let end = section[1..].find("\n[").map_or(section.len(), |i| i + 1);
    let is_example = |line: &str| {
        line.starts_with("[[llm.")
            || line.split_once(" = ").is_some_and(|(key, _)| key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    };
    let lines: Vec<&str> =
        section[..end].lines().filter_map(|l| l.strip_prefix("# ")).filter(|l| is_example(l)).collect();
    // Keys of `[llm]` itself come before its arrays of tables.
    format!("[llm]\n{}", lines.join("\n"))
}

#[test]
fn shipped_llm_examples_parse_and_document_every_key() {
    let example = shipped_llm_examples();
    let raw = RawConfig::parse(&example, Path::new("maestro.toml [llm] examples")).expect("the examples parse");
    let env: Env = [("OPENAI_API_KEY".to_owned(), "sk-test".to_owned())].into();
    let config = Config::from_raw(raw, &env, &Overrides::default()).expect("the examples are valid");
    assert_eq!(config.llm.providers.len(), 3);
    assert_eq!(config.llm.models.len(), 4);
    assert_eq!(config.llm.router_tier, Some(maestro_core::plugin::ModelTier::Small));
    let ollama = config.llm.providers.iter().find(|p| p.name == "ollama").expect("ollama");
    assert!(ollama.allow_private && ollama.api_key.is_none());
    for key in [
        "router_tier",
        "name",
        "kind",
        "base_url",
        "api_key",
        "allow_private",
        "connect_timeout",
        "first_token_timeout",
        "idle_timeout",
        "max_retries",
        "id",
        "provider",
        "model",
        "tier",
        "context_window",
        "max_output_tokens",
        "fallbacks",
    ] {
        assert!(example.contains(&format!("\n{key} = ")), "config/maestro.toml does not document llm key {key}");
    }
}
