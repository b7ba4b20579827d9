//! Golden files for policy errors, and the shipped policy files.
//!
//! Each `tests/golden/policy/NAME.toml` (one file) or `NAME/` (several files, compiled
//! together in name order) must be rejected with exactly the text in `NAME.err`.
//! `BLESS=1 cargo test -p maestro-core --test policy_golden` rewrites the `.err` files.

use std::path::{Path, PathBuf};

use maestro_core::Role;
use maestro_core::policy::{Decision, Denial, PolicySet, Setting, Source, Subject};

const DEFAULT: &str = include_str!("../../../policies/default.toml");
const MULTI_TEAM: &str = include_str!("../../../policies/examples/multi-team.toml");

const KEY: &str = "key_0123456789abcdefghjk";

/// `(display name, text)` of every file in a case, in name order.
fn case_sources(dir: &Path, path: &Path) -> Vec<(String, String)> {
    let mut files = if path.is_dir() {
        std::fs::read_dir(path)
            .expect("case dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(dir).expect("inside the golden dir").to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&p).expect("read case");
            (name, text)
        })
        .collect()
}

#[test]
fn policy_errors_match_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/policy");
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    let mut failures = Vec::new();
    for case in &cases {
        let sources = case_sources(&dir, case);
        let name = case.file_name().expect("name").to_string_lossy().into_owned();
        let actual = match PolicySet::parse(sources.iter().map(|(n, t)| (n.as_str(), t.as_str()))) {
            Ok(set) => panic!("{name} should be rejected, got {set:?}"),
            Err(err) => format!("{err}\n"),
        };
        let expected_path = case.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &actual).expect("bless");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("missing {}; run with BLESS=1", expected_path.display()));
        if actual != expected {
            failures.push(format!("{name}:\n--- expected\n{expected}--- actual\n{actual}"));
        }
    }
    assert!(failures.is_empty(), "golden mismatches (run with BLESS=1 to accept):\n{}", failures.join("\n"));
    assert!(cases.len() >= 12, "golden cases found: {}", cases.len());
}

fn shipped() -> PolicySet {
    PolicySet::parse([("policies/default.toml", DEFAULT), ("policies/multi-team.toml", MULTI_TEAM)])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn who(tenant: &'static str, role: Role) -> Subject<'static> {
    Subject { tenant, role, key_id: KEY }
}

fn rule_name(decision: &Decision) -> String {
    match decision {
        Decision::Allow(g) => g.rule.name.clone(),
        Decision::Deny(Denial::Rule(r)) => format!("deny:{}", r.name),
        Decision::Deny(Denial::NoGrant) => "default-deny".to_owned(),
    }
}

#[test]
fn shipped_default_policy_compiles_alone() {
    let set = PolicySet::parse([("policies/default.toml", DEFAULT)]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        set.rule_counts(),
        (7, 0),
        "offline tools, personas, plugin resources, documents, runs and memory for members, memory search for viewers"
    );
    assert!(set.decide_resources(&who("anyone", Role::Member), "personas").is_allowed());
    assert!(!set.decide_resources(&who("anyone", Role::Viewer), "personas").is_allowed());
    assert!(!set.decide_resources(&who("anyone", Role::Admin), "thirdparty").is_allowed());
}

#[test]
fn shipped_default_grants_every_memory_tool_to_members_and_only_search_to_viewers() {
    let set = PolicySet::parse([("policies/default.toml", DEFAULT)]).expect("valid");
    for tool in ["memory.search", "memory.store", "memory.forget"] {
        assert_eq!(rule_name(&set.decide(&who("anyone", Role::Member), tool)), "members-memory", "{tool}");
        assert!(set.decide(&who("anyone", Role::Admin), tool).is_allowed(), "{tool}");
    }
    assert_eq!(rule_name(&set.decide(&who("anyone", Role::Viewer), "memory.search")), "viewers-memory-search");
    for tool in ["memory.store", "memory.forget"] {
        assert_eq!(rule_name(&set.decide(&who("anyone", Role::Viewer), tool)), "default-deny", "{tool}");
    }
}

#[test]
fn shipped_default_grants_offline_tools_to_members_and_nothing_to_viewers() {
    let set = PolicySet::parse([("policies/default.toml", DEFAULT)]).expect("valid");
    let member = set.decide(&who("anyone", Role::Member), "calc.add");
    let grant = member.grant().expect("members may use calc");
    assert_eq!(grant.credits, 1);
    assert!(grant.network.is_empty());
    assert!(matches!(grant.source(Setting::Output), Source::Defaults(_)));
    assert!(set.decide(&who("anyone", Role::Admin), "text.upper").is_allowed());
    assert!(!set.decide(&who("anyone", Role::Viewer), "calc.add").is_allowed());
    assert!(!set.decide(&who("anyone", Role::Admin), "web.fetch").is_allowed());
    assert!(set.decide(&who("anyone", Role::Member), "personas.architect").is_allowed());
    assert!(!set.decide(&who("anyone", Role::Viewer), "personas.architect").is_allowed());
    for tool in ["documents.list", "documents.read", "documents.create", "documents.edit"] {
        assert!(set.decide(&who("anyone", Role::Member), tool).is_allowed(), "{tool}");
        assert!(!set.decide(&who("anyone", Role::Viewer), tool).is_allowed(), "{tool}");
    }
    for tool in ["runs.start", "runs.answer", "runs.get"] {
        assert!(set.decide(&who("anyone", Role::Member), tool).is_allowed(), "{tool}");
        assert!(!set.decide(&who("anyone", Role::Viewer), tool).is_allowed(), "{tool}");
    }
}

#[test]
fn shipped_example_composes_with_the_default() {
    let set = shipped();
    let decide = |tenant, role, tool| rule_name(&set.decide(&who(tenant, role), tool));
    assert_eq!(decide("research", Role::Member, "web.fetch"), "research-fetch");
    assert_eq!(decide("research", Role::Admin, "web.fetch"), "research-fetch");
    assert_eq!(decide("research", Role::Admin, "calc.add"), "research-admins-all");
    assert_eq!(decide("research", Role::Viewer, "web.fetch"), "default-deny");
    assert_eq!(decide("support", Role::Member, "text.upper"), "support-text");
    assert_eq!(decide("support", Role::Member, "calc.add"), "members-offline-tools");
    assert_eq!(decide("contractors", Role::Admin, "web.fetch"), "deny:contractors-no-web");
    assert_eq!(decide("contractors", Role::Member, "calc.add"), "members-offline-tools");
    let summarise = set.decide(&who("support", Role::Member), "summarise.text");
    let models = summarise.grant().and_then(|g| g.models.clone()).expect("support may ask models");
    assert_eq!((models.tiers, models.max_tokens), (vec![maestro_core::plugin::ModelTier::Small], 512));
    assert_eq!(decide("research", Role::Member, "summarise.text"), "default-deny", "no model access by default");

    let fetch = set.decide(&who("research", Role::Member), "web.fetch");
    let grant = fetch.grant().expect("allowed");
    assert_eq!(grant.secrets_for("https", "api.github.com", 443).count(), 1);
    assert!(grant.network_rule_for("https", "en.wikipedia.org", 443).is_some());
    assert_eq!(grant.config_for("web").and_then(|c| c.get("max_redirects")), Some(&serde_json::json!(3)));

    let ci = Subject { tenant: "platform", role: Role::Member, key_id: "key_7h3kq9m2x4v8c6b1n5p0" };
    let ci_fetch = set.decide(&ci, "web.fetch");
    let rule = ci_fetch
        .grant()
        .and_then(|g| g.network_rule_for("http", "10.20.0.15", 8080))
        .expect("the CI key reaches the internal service");
    assert!(rule.allow_private);

    let leaked = Subject { key_id: "key_2bad2bad2bad2bad2bad", ..ci };
    assert_eq!(rule_name(&set.decide(&leaked, "calc.add")), "deny:leaked-key");
}

#[test]
fn explain_names_the_rule_and_where_each_setting_came_from() {
    let text = shipped().explain(&who("support", Role::Member), "text.upper").to_string();
    assert!(text.starts_with("ALLOW text.upper\n"), "{text}");
    assert!(text.contains("rule:    grant \"support-text\" at policies/multi-team.toml:"), "{text}");
    assert!(text.contains("from defaults, policies/default.toml:"), "{text}");
    assert!(text.contains("also matched, not used: grant \"members-offline-tools\""), "{text}");
}
