//! No Docker engine runs here, so the Dockerfile and compose file are checked by
//! construction: parsed, and their wiring compared with what the binary reads.

use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML")
}

fn env_map(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("unexpected env value {other:?}"),
                };
                (k.as_str().expect("env key").to_owned(), v)
            })
            .collect(),
        other => panic!("environment must be a mapping, got {other:?}"),
    }
}

#[test]
fn compose_runs_maestro_against_a_healthy_pgvector_postgres() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    assert_eq!(services.len(), 2, "exactly maestro and postgres");
    let maestro = &compose["services"]["maestro"];
    let postgres = &compose["services"]["postgres"];

    let image = postgres["image"].as_str().expect("postgres image");
    assert!(image.starts_with("pgvector/pgvector:"), "{image}");
    assert!(postgres["healthcheck"]["test"].is_sequence(), "postgres has a healthcheck");
    assert_eq!(maestro["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    assert!(maestro["healthcheck"]["test"].is_sequence(), "maestro has a healthcheck");

    // The named volume is declared and mounted at Postgres' data directory.
    let volumes = compose["volumes"].as_mapping().expect("top-level volumes");
    let mounts: Vec<&str> =
        postgres["volumes"].as_sequence().expect("mounts").iter().filter_map(Value::as_str).collect();
    let (volume, target) = mounts.iter().find_map(|m| m.split_once(':')).expect("a named volume mount");
    assert!(volumes.contains_key(volume), "volume {volume} is declared");
    assert!(target.starts_with("/var/lib/postgresql"), "{target}");

    // Every MAESTRO_ variable is one the binary reads, and the URL matches Postgres'.
    let maestro_env = env_map(maestro);
    let known: Vec<&str> = maestro_host::config::ENV_VARS.iter().map(|(k, _)| *k).collect();
    for (key, _) in &maestro_env {
        assert!(!key.starts_with("MAESTRO_") || known.contains(&key.as_str()), "unknown variable {key}");
    }
    let postgres_env = env_map(postgres);
    let get = |env: &[(String, String)], key: &str| {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{key} is not set"))
    };
    let url = get(&maestro_env, "MAESTRO_DATABASE_URL");
    let user = get(&postgres_env, "POSTGRES_USER");
    let db = get(&postgres_env, "POSTGRES_DB");
    assert!(url.starts_with(&format!("postgres://{user}:")), "{url}");
    assert!(url.contains("@postgres:5432/"), "{url} must reach the postgres service");
    assert!(url.ends_with(&format!("/{db}")), "{url}");
    let listen = get(&maestro_env, "MAESTRO_LISTEN");
    assert!(listen.starts_with("0.0.0.0:"), "inside a container maestro listens on all interfaces: {listen}");
    let port = listen.rsplit(':').next().expect("port");
    let ports: Vec<&str> = maestro["ports"].as_sequence().expect("ports").iter().filter_map(Value::as_str).collect();
    assert!(ports.iter().any(|p| p.ends_with(&format!(":{port}"))), "{ports:?} publishes {port}");
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_healthcheck() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let instructions: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let from = instructions.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(from >= 2, "multi-stage build");
    let user = instructions.iter().rev().find(|l| l.starts_with("USER ")).expect("a USER instruction");
    assert!(!user.contains("root") && user.trim_start_matches("USER ").trim() != "0", "{user}");
    assert!(instructions.iter().any(|l| l.starts_with("HEALTHCHECK ")), "HEALTHCHECK");
    assert!(instructions.iter().any(|l| l.contains("wasm32-wasip2")), "the image builds plugins too");
    assert!(
        instructions.iter().any(|l| l.starts_with("COPY") && l.contains("migrations")),
        "migrations are in the build"
    );
    // The offline embedder's model is fetched by the same script `scripts/run` uses and
    // the runtime points the host at it.
    assert!(instructions.iter().any(|l| l.contains("scripts/model.sh")), "the image fetches the model");
    let model_env = instructions
        .iter()
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("MAESTRO_EMBEDDINGS_MODEL_DIR=")))
        .expect("the runtime sets MAESTRO_EMBEDDINGS_MODEL_DIR");
    assert!(
        instructions.iter().any(|l| l.starts_with("COPY --from=model") && l.trim_end().ends_with(model_env)),
        "the model is copied to {model_env}"
    );
    let entry = instructions.iter().find(|l| l.starts_with("ENTRYPOINT")).expect("ENTRYPOINT");
    assert!(entry.contains("maestro"), "{entry}");
}

#[test]
fn the_readme_commands_stop_at_the_first_failure_and_share_one_target_dir() {
    for script in ["scripts/test", "scripts/run"] {
        let text = std::fs::read_to_string(root().join(script)).expect("script");
        let commands: Vec<&str> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        // Before anything runs: fail on the first error (a failing test must fail CI),
        // from the checkout, with the shared cargo environment.
        assert_eq!(
            commands.get(..3),
            Some(&["set -euo pipefail", "cd \"$(dirname \"$0\")/..\"", "source scripts/cargo-env.sh"][..]),
            "{script} must start with these lines"
        );
    }
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(ci.contains("set -euo pipefail") && ci.contains("exec scripts/test"), "{ci}");
}
