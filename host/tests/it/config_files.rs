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
