//! Keeps the dependency direction honest: each outside library is used only by the
//! module that adapts it, and core stays pure.
//!
//! Every library `maestro-host` depends on must be named below: plumbing any module may
//! use, or the module paths allowed to use it. A module path covers both layouts
//! (`tools.rs` and `tools/…` are module `tools`) and every submodule, so modules added
//! later (`jobs`, the split of `tools`) are checked without being listed: a module no
//! rule names may use plumbing only.
//!
//! The heavy adapters live in crates of their own (`ADAPTER_CRATES`) and are checked
//! by the same rules under the module name they have in the host (`maestro-sandbox` is
//! module `sandbox`, re-exported as `maestro_host::sandbox`): each such crate may depend
//! only on plumbing and on what its module is allowed, and the host crate no longer
//! depends on what they wrap (`NOT_IN_HOST`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Libraries any module may use: the runtime, logging, errors, (de)serialisation and
/// pure helpers with no I/O of their own.
const PLUMBING: &[&str] = &[
    "maestro_core",
    "tokio",
    "tokio_util",
    "tracing",
    "thiserror",
    "async_trait",
    "serde",
    "serde_json",
    "chrono",
    "humantime",
    "hex",
    "sha2",
];

/// (library, the module paths allowed to use it). `main` is `main.rs`, `crate` is
/// `lib.rs` (the composition root).
const ALLOWANCES: &[(&str, &[&str])] = &[
    // Application edges.
    ("anyhow", &["main", "crate", "cli"]),
    // The adapter crates, re-exported by the composition root under their module name.
    // The sandbox reaches the outbound client only through its `wasi:http` glue.
    // The model providers reach the network only through the outbound client; `maestro
    // chat` talks to a maestro server through it.
    ("maestro_outbound", &["crate", "sandbox::net", "llm", "cli::chat"]),
    ("maestro_sandbox", &["crate"]),
    ("maestro_llm", &["crate"]),
    ("clap", &["main", "cli"]),
    ("tracing_subscriber", &["telemetry"]),
    ("getrandom", &["random"]),
    ("toml", &["config", "cli", "plugins"]),
    // Storage.
    ("sqlx", &["storage"]),
    // HTTP server.
    ("axum", &["http"]),
    ("tower", &["http"]),
    ("tower_http", &["http"]),
    ("utoipa", &["http"]),
    // Server-sent event bodies (axum streams a `Stream`; rmcp's event store for MCP
    // stream resumption returns one).
    ("futures_util", &["http", "mcp"]),
    // MCP.
    ("rmcp", &["mcp"]),
    // Search (coming).
    ("tantivy", &["search"]),
    // Plugin sandbox.
    ("wasmtime", &["sandbox"]),
    ("wasmtime_wasi", &["sandbox"]),
    ("wasmtime_wasi_http", &["sandbox"]),
    // The one outbound HTTP client (the sandbox converts wasi:http bodies onto it).
    ("hyper", &["outbound"]),
    ("hyper_util", &["outbound"]),
    ("rustls", &["outbound"]),
    ("tokio_rustls", &["outbound"]),
    ("webpki_roots", &["outbound"]),
    ("http_body", &["outbound"]),
    ("http_body_util", &["outbound", "sandbox::net", "llm"]),
    ("bytes", &["outbound", "sandbox", "http", "billing", "llm", "cli::chat"]),
    // HTTP vocabulary types (requests, headers), shared by the adapters that speak HTTP
    // and by the tool pipeline when it needs header types.
    ("http", &["outbound", "sandbox", "http", "mcp", "tools", "billing", "llm", "cli::chat"]),
    // Billing: Stripe's form-encoded requests.
    ("form_urlencoded", &["billing"]),
    // Document exports: Markdown parsing and PDF typesetting.
    ("pulldown_cmark", &["export"]),
    ("typst", &["export"]),
    ("typst_pdf", &["export"]),
    ("typst_assets", &["export"]),
    // Artifacts: the S3-compatible blob store.
    ("object_store", &["artifacts"]),
    // The offline embedder (crate `maestro-embed`, module `embed`): BERT inference by
    // candle on its own thread pool, and the model's tokenizer.
    ("maestro_embed", &["crate"]),
    ("candle_core", &["embed"]),
    ("candle_nn", &["embed"]),
    ("candle_transformers", &["embed"]),
    ("tokenizers", &["embed"]),
    ("rayon", &["embed"]),
];

/// Known debts: (module path, library, why). Each must still be true (so the list only
/// shrinks); fixing one means deleting its line.
const TOLERATED: &[(&str, &str, &str)] = &[];

/// Packages whose library name is not the package name with `-` as `_`.
const LIB_NAMES: &[(&str, &str)] = &[];

/// The adapter crates split out of the host: (directory under `host/`, the module path
/// their `src/` stands for).
const ADAPTER_CRATES: &[(&str, &str)] =
    &[("outbound", "outbound"), ("sandbox", "sandbox"), ("llm", "llm"), ("embed", "embed")];

/// Libraries the host crate reaches only through an adapter crate, never directly.
const NOT_IN_HOST: &[&str] = &[
    "wasmtime",
    "wasmtime-wasi",
    "wasmtime-wasi-http",
    "hyper",
    "hyper-util",
    "rustls",
    "tokio-rustls",
    "webpki-roots",
    "http-body",
    "http-body-util",
    "candle-core",
    "candle-nn",
    "candle-transformers",
    "tokenizers",
];

/// Of `NOT_IN_HOST`, the host's dev-dependencies the benches use directly (never the
/// library or the binary): (package, why).
const BENCH_ONLY: &[(&str, &str)] = &[
    ("wasmtime", "benches/sandbox.rs measures bare wasmtime as the floor"),
    ("hyper", "benches/mcp.rs: a connection-level HTTP/1.1 client"),
    ("hyper-util", "benches/mcp.rs: the tokio I/O adapter for that client"),
    ("http-body-util", "benches/mcp.rs: request and response bodies"),
    ("wasmtime-wasi", "benches/sandbox.rs measures a real component with a WASI linker as a floor"),
    ("wasmtime-wasi-http", "benches/sandbox.rs: the WASI HTTP imports of that component"),
];

/// Libraries no adapter crate may depend on: other adapters' frameworks.
const NOT_IN_ADAPTER_CRATES: &[&str] = &["axum", "sqlx", "rmcp", "tantivy", "maestro-host"];

/// Libraries `maestro-core` must never depend on.
const NOT_IN_CORE: &[&str] = &[
    "tokio",
    "axum",
    "sqlx",
    "wasmtime",
    "wasmtime-wasi",
    "wasmtime-wasi-http",
    "rmcp",
    "tantivy",
    "reqwest",
    "tower",
    "hyper",
    "rustls",
    "tokio-rustls",
    "clap",
    "tracing-subscriber",
    "candle-core",
    "tokenizers",
];

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

/// `tools/auth.rs` → `tools::auth`, `tools/mod.rs` and `tools.rs` → `tools`, `lib.rs`
/// → `crate`, `main.rs` → `main`.
fn module_path(relative: &str) -> String {
    let trimmed = relative.trim_end_matches(".rs").trim_end_matches("/mod");
    match trimmed {
        "lib" => "crate".to_owned(),
        other => other.replace('/', "::"),
    }
}

/// The module path of a file of an adapter crate whose `src/` stands for module `root`:
/// `lib.rs` → `root`, `net.rs` → `root::net`.
fn adapter_module_path(root: &str, relative: &str) -> String {
    match module_path(relative).as_str() {
        "crate" => root.to_owned(),
        other => format!("{root}::{other}"),
    }
}

/// Whether `module` is `allowed` or inside it.
fn within(module: &str, allowed: &str) -> bool {
    module == allowed || module.strip_prefix(allowed).is_some_and(|rest| rest.starts_with("::"))
}

/// Names a file binds itself (`mod http;`, `use crate::http;`, `… as ip`), which shadow
/// a library of the same name in that file.
fn local_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("").trim();
        let code = code.strip_prefix("pub(crate) ").or_else(|| code.strip_prefix("pub ")).unwrap_or(code);
        if let Some(rest) = code.strip_prefix("mod ") {
            names.insert(rest.trim_end_matches([';', '{', ' ']).to_owned());
        }
        if let Some(path) = code.strip_prefix("use ")
            && ["crate::", "super::", "self::"].iter().any(|p| path.starts_with(p))
            && let Some(last) = path.trim_end_matches(';').rsplit("::").next()
            && last.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            names.insert(last.to_owned());
        }
        let mut words = code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty());
        while let Some(word) = words.next() {
            if word == "as"
                && let Some(alias) = words.next()
            {
                names.insert(alias.to_owned());
            }
        }
    }
    names
}

/// The libraries (of `libraries`) a file's code names at the root of a path
/// (`hyper::…`, `use hyper…`), with the line numbers.
fn library_uses(text: &str, libraries: &[&str]) -> Vec<(usize, String)> {
    let shadowed = local_names(text);
    let mut uses = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let bytes = code.as_bytes();
        for library in libraries.iter().filter(|l| !shadowed.contains(**l)) {
            let mut from = 0;
            while let Some(at) = code[from..].find(library).map(|i| i + from) {
                from = at + library.len();
                let before = at.checked_sub(1).map(|i| bytes[i]);
                let at_root = !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
                let rest = &code[from..];
                let path = rest.starts_with("::");
                let imported = code[..at].trim_end().ends_with("use")
                    && !rest.starts_with(|c: char| c == '_' || c.is_ascii_alphanumeric());
                if at_root && (path || imported) {
                    uses.push((n + 1, (*library).to_owned()));
                    break;
                }
            }
        }
    }
    uses
}

/// Violations in one file: `(line, library)` used outside its allowance.
fn violations(module: &str, text: &str, libraries: &[&str]) -> Vec<(usize, String)> {
    library_uses(text, libraries)
        .into_iter()
        .filter(|(_, library)| {
            let allowed = ALLOWANCES
                .iter()
                .find(|(l, _)| l == library)
                .is_some_and(|(_, modules)| modules.iter().any(|m| within(module, m)));
            let tolerated = TOLERATED.iter().any(|(m, l, _)| l == library && within(module, m));
            !PLUMBING.contains(&library.as_str()) && !allowed && !tolerated
        })
        .collect()
}

/// The package names in one section (`dependencies`, `dev-dependencies`) of the
/// manifest of the crate in `host/<dir>` (`.` is the host crate itself).
fn packages(dir: &str, section: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join("Cargo.toml");
    let manifest = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let manifest: toml::Table = manifest.parse().expect("toml");
    let deps = manifest.get(section).and_then(|d| d.as_table()).cloned().unwrap_or_default();
    deps.keys().cloned().collect()
}

/// The library names of the crate in `host/<dir>`'s dependencies.
fn dependencies(dir: &str) -> Vec<String> {
    packages(dir, "dependencies")
        .into_iter()
        .map(|package| {
            LIB_NAMES
                .iter()
                .find(|(p, _)| *p == package)
                .map_or_else(|| package.replace('-', "_"), |(_, lib)| (*lib).to_owned())
        })
        .collect()
}

fn host_dependencies() -> Vec<String> {
    dependencies(".")
}

/// The files of the crate in `host/<dir>`, each with its module path (`module` maps a
/// path relative to `src/` to it).
fn crate_sources(dir: &str, module: impl Fn(&str) -> String) -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
            (module(&relative), std::fs::read_to_string(&file).expect("read"))
        })
        .collect()
}

fn sources() -> Vec<(String, String)> {
    crate_sources(".", module_path)
}

/// The dependencies of an adapter crate whose code is module `root` that none of its
/// modules may use (neither plumbing nor allowed to `root`, what contains it, or one of
/// its submodules).
fn unallowed_dependencies(root: &str, libraries: &[String]) -> Vec<String> {
    libraries
        .iter()
        .filter(|library| {
            !PLUMBING.contains(&library.as_str())
                && !ALLOWANCES
                    .iter()
                    .any(|(l, modules)| l == library && modules.iter().any(|m| within(root, m) || within(m, root)))
        })
        .cloned()
        .collect()
}

#[test]
fn every_library_the_host_depends_on_has_an_allowance() {
    let unnamed: Vec<String> = host_dependencies()
        .into_iter()
        .filter(|lib| !PLUMBING.contains(&lib.as_str()) && !ALLOWANCES.iter().any(|(l, _)| l == lib))
        .collect();
    assert!(
        unnamed.is_empty(),
        "dependencies with no rule in tests/it/architecture.rs (add them to PLUMBING or ALLOWANCES): {unnamed:?}"
    );
}

#[test]
fn outside_libraries_stay_in_their_adapter_modules() {
    let libraries = host_dependencies();
    let libraries: Vec<&str> = libraries.iter().map(String::as_str).collect();
    let sources = sources();
    assert!(sources.len() > 10, "found the sources");
    let mut found = Vec::new();
    for (module, text) in &sources {
        for (line, library) in violations(module, text, &libraries) {
            found.push(format!("{module} (line {line}) uses {library}"));
        }
    }
    assert!(found.is_empty(), "libraries used outside their adapter:\n{}", found.join("\n"));
}

#[test]
fn tolerated_debts_are_still_there() {
    let libraries = host_dependencies();
    let libraries: Vec<&str> = libraries.iter().map(String::as_str).collect();
    let sources = sources();
    for (module, library, why) in TOLERATED {
        let still = sources
            .iter()
            .filter(|(m, _)| within(m, module))
            .any(|(_, text)| library_uses(text, &libraries).iter().any(|(_, l)| l == library));
        assert!(still, "{module} no longer uses {library} ({why}): delete the line from TOLERATED");
    }
}

#[test]
fn the_scan_catches_a_module_reaching_past_its_allowance() {
    let libraries = ["hyper", "http", "wasmtime", "wasmtime_wasi_http", "sqlx", "anyhow", "tokio"];
    let text = "use hyper::client;\nuse crate::http::HttpSettings;\nfn f() { let _ = sqlx::query(\"x\"); }\n\
                // wasmtime::Engine in a comment\nlet x: anyhow::Result<()> = todo();\ntokio::spawn(f());\n";
    let found: Vec<String> = violations("tools::run", text, &libraries).into_iter().map(|(_, l)| l).collect();
    assert_eq!(found, ["hyper", "sqlx", "anyhow"]);
    // Libraries are matched whole: `wasmtime_wasi_http` is not `wasmtime`.
    let found: Vec<String> =
        violations("outbound", "use wasmtime_wasi_http::Error;\n", &libraries).into_iter().map(|(_, l)| l).collect();
    assert_eq!(found, ["wasmtime_wasi_http"]);
    // A module named like a library shadows it in the file that declares it.
    assert!(violations("crate", "pub mod http;\nfn f() -> http::HttpSettings { todo() }\n", &libraries).is_empty());
    // Submodules inherit the allowance; look-alike names do not.
    assert!(violations("sandbox::net", "use http::Request;\nuse wasmtime_wasi_http::Error;\n", &libraries).is_empty());
    assert_eq!(violations("sandboxes", "use wasmtime::Engine;\n", &libraries).len(), 1);
    assert_eq!(module_path("tools/mod.rs"), "tools");
    assert_eq!(module_path("tools/auth.rs"), "tools::auth");
    assert_eq!(module_path("lib.rs"), "crate");
}

#[test]
fn adapter_crates_depend_only_on_plumbing_and_what_their_module_is_allowed() {
    for (dir, root) in ADAPTER_CRATES {
        let unallowed = unallowed_dependencies(root, &dependencies(dir));
        assert!(
            unallowed.is_empty(),
            "host/{dir} (module `{root}`) depends on libraries its module may not use: {unallowed:?}"
        );
    }
}

#[test]
fn adapter_crates_use_outside_libraries_only_in_their_allowed_modules() {
    for (dir, root) in ADAPTER_CRATES {
        let libraries = dependencies(dir);
        let libraries: Vec<&str> = libraries.iter().map(String::as_str).collect();
        let sources = crate_sources(dir, |relative| adapter_module_path(root, relative));
        assert!(!sources.is_empty(), "found the sources of host/{dir}");
        let mut found = Vec::new();
        for (module, text) in &sources {
            for (line, library) in violations(module, text, &libraries) {
                found.push(format!("{module} (host/{dir}, line {line}) uses {library}"));
            }
        }
        assert!(found.is_empty(), "libraries used outside their adapter:\n{}", found.join("\n"));
    }
}

#[test]
fn no_adapter_crate_depends_on_the_web_database_mcp_or_search_frameworks() {
    for (dir, _) in ADAPTER_CRATES {
        for section in ["dependencies", "dev-dependencies"] {
            let deps = packages(dir, section);
            for forbidden in NOT_IN_ADAPTER_CRATES {
                assert!(!deps.iter().any(|d| d == forbidden), "host/{dir} [{section}] must not depend on {forbidden}");
            }
        }
    }
}

#[test]
fn the_host_reaches_wasmtime_hyper_and_rustls_only_through_the_adapter_crates() {
    let deps = packages(".", "dependencies");
    for forbidden in NOT_IN_HOST {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "maestro-host must not depend on {forbidden} (it reaches it through maestro-sandbox or maestro-outbound)"
        );
    }
    for dev in packages(".", "dev-dependencies") {
        assert!(
            !NOT_IN_HOST.contains(&dev.as_str()) || BENCH_ONLY.iter().any(|(p, _)| *p == dev),
            "maestro-host [dev-dependencies] has {dev}: only the benches' {BENCH_ONLY:?} may be there"
        );
    }
    for (package, why) in BENCH_ONLY {
        assert!(NOT_IN_HOST.contains(package), "{package} ({why}) is not in NOT_IN_HOST: delete it from BENCH_ONLY");
    }
    for (dir, _) in ADAPTER_CRATES {
        assert!(deps.iter().any(|d| *d == format!("maestro-{dir}")), "maestro-host depends on maestro-{dir}");
    }
}

#[test]
fn the_crate_check_refuses_a_dependency_the_crates_module_may_not_use() {
    let deps = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    assert!(unallowed_dependencies("sandbox", &deps(&["wasmtime", "maestro_outbound", "tokio", "http"])).is_empty());
    assert_eq!(unallowed_dependencies("outbound", &deps(&["hyper", "wasmtime", "axum"])), ["wasmtime", "axum"]);
    assert_eq!(unallowed_dependencies("sandbox", &deps(&["rustls", "maestro_sandbox"])), ["rustls", "maestro_sandbox"]);
    assert_eq!(adapter_module_path("sandbox", "lib.rs"), "sandbox");
    assert_eq!(adapter_module_path("sandbox", "net.rs"), "sandbox::net");
    assert_eq!(adapter_module_path("outbound", "client/tls.rs"), "outbound::client::tls");
    // Inside an adapter crate, the module rules still apply per file.
    assert_eq!(violations("outbound::client", "use wasmtime::Engine;\n", &["wasmtime"]).len(), 1);
    let outbound = ["maestro_outbound", "http_body_util"];
    assert!(
        violations("sandbox::net", "use maestro_outbound::NetLog;\nuse http_body_util::Full;\n", &outbound).is_empty()
    );
    assert_eq!(violations("sandbox::port", "use maestro_outbound::NetPolicy;\n", &outbound).len(), 1);
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
