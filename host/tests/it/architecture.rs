//! Keeps the dependency direction honest: each outside library is used only by the
//! module that adapts it, and core stays pure.

use std::path::{Path, PathBuf};

/// (library path prefix, the `host/src` paths allowed to use it).
const ALLOWANCES: &[(&str, &[&str])] = &[
    ("sqlx", &["storage/"]),
    ("axum", &["http/"]),
    ("tower_http", &["http/"]),
    ("utoipa", &["http/"]),
    ("tracing_subscriber", &["telemetry.rs"]),
    ("wasmtime", &["sandbox/"]),
    ("rmcp", &["mcp/"]),
    ("tantivy", &["search/"]),
    ("stripe", &["billing/"]),
    ("stripe_checkout", &["billing/"]),
    ("stripe_core", &["billing/"]),
    ("stripe_types", &["billing/"]),
];

/// Libraries `maestro-core` must never depend on.
const NOT_IN_CORE: &[&str] = &["tokio", "axum", "sqlx", "wasmtime", "rmcp", "tantivy", "reqwest", "tower"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn outside_libraries_stay_in_their_adapter_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found the sources");
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&file).expect("read");
        for (library, allowed) in ALLOWANCES {
            if allowed.iter().any(|a| relative.starts_with(a)) {
                continue;
            }
            let uses = text.lines().enumerate().filter(|(_, line)| {
                let code = line.split("//").next().unwrap_or("");
                code.contains(&format!("{library}::")) || code.contains(&format!("use {library}"))
            });
            for (n, line) in uses {
                violations.push(format!("host/src/{relative}:{}: uses {library} ({})", n + 1, line.trim()));
            }
        }
    }
    assert!(violations.is_empty(), "libraries used outside their adapter:\n{}", violations.join("\n"));
}

#[test]
fn core_depends_on_no_runtime_web_database_or_wasm_library() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("core/Cargo.toml")).expect("read");
    let manifest: toml::Table = manifest.parse().expect("toml");
    for section in ["dependencies", "dev-dependencies"] {
        let deps = manifest.get(section).and_then(|d| d.as_table()).cloned().unwrap_or_default();
        for forbidden in NOT_IN_CORE {
            assert!(!deps.contains_key(*forbidden), "maestro-core [{section}] must not depend on {forbidden}");
        }
    }
}
