//! Policy behaviour, end to end from TOML text (no I/O).

use std::time::Duration;

use proptest::prelude::*;

use super::matcher::{Specificity, SubjectPattern, ToolPattern};
use super::*;
use crate::auth::Role;

const KEY: &str = "key_0123456789abcdefghjk";
const OTHER_KEY: &str = "key_zzzzzzzzzzzzzzzzzzzz";

fn set(text: &str) -> PolicySet {
    PolicySet::parse([("p.toml", text)]).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(files: &[(&str, &str)]) -> String {
    match PolicySet::parse(files.iter().copied()) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string(),
    }
}

fn caller(tenant: &'static str, role: Role) -> Subject<'static> {
    Subject { tenant, role, key_id: KEY }
}

fn winner(set: &PolicySet, subject: &Subject<'_>, tool: &str) -> String {
    match set.decide(subject, tool) {
        Decision::Allow(g) => g.rule.name.clone(),
        Decision::Deny(Denial::Rule(r)) => format!("deny:{}", r.name),
        Decision::Deny(Denial::NoGrant) => "default-deny".to_owned(),
    }
}

#[test]
fn empty_set_denies_everything() {
    let decision = PolicySet::deny_all().decide(&caller("acme", Role::Admin), "calc.add");
    assert_eq!(decision, Decision::Deny(Denial::NoGrant));
    assert_eq!(decision.to_string(), "no rule grants this tool (default deny)");
    assert_eq!(set("version = 1").rule_counts(), (0, 0));
}

#[test]
fn grant_allows_only_what_it_names() {
    let s = set(r#"
version = 1
[[grant]]
name = "calc"
subjects = ["role:member"]
tools = ["calc.*"]
"#);
    assert!(s.decide(&caller("acme", Role::Member), "calc.add").is_allowed());
    assert!(!s.decide(&caller("acme", Role::Member), "web.fetch").is_allowed());
    assert!(!s.decide(&caller("acme", Role::Admin), "calc.add").is_allowed());
    assert!(!s.decide(&caller("acme", Role::Viewer), "calc.add").is_allowed());
}

#[test]
fn effective_settings_come_from_rule_then_defaults_then_built_in() {
    let s = set(r#"
version = 1
[defaults]
timeout = "7s"
credits = 2

[[grant]]
name = "g"
subjects = ["*"]
tools = ["*"]
memory = "128MiB"
rate = "10/s"
"#);
    let d = s.decide(&caller("acme", Role::Viewer), "x.y");
    let g = d.grant().expect("allowed");
    assert_eq!(g.limits.memory_bytes, 128 << 20);
    assert_eq!(g.limits.timeout, Duration::from_secs(7));
    assert_eq!(g.limits.fuel, Limits::BUILT_IN.fuel);
    assert_eq!(g.credits, 2);
    assert_eq!(g.rate, Some(Rate { calls: 10, per: Duration::from_secs(1) }));
    assert_eq!(g.source(Setting::Memory).to_string(), "rule, p.toml:11:10");
    assert_eq!(g.source(Setting::Timeout).to_string(), "defaults, p.toml:4:11");
    assert_eq!(g.source(Setting::Fuel), &Source::BuiltIn);
    assert_eq!(g.rule.location.to_string(), "p.toml:8:8");
}

#[test]
fn deny_beats_the_most_specific_grant() {
    let s = set(&format!(
        r#"
version = 1
[[grant]]
name = "just-me"
subjects = ["key:{KEY}"]
tools = ["web.fetch"]

[[deny]]
name = "no-web"
subjects = ["*"]
tools = ["web.*"]
"#
    ));
    assert_eq!(winner(&s, &caller("acme", Role::Admin), "web.fetch"), "deny:no-web");
}

#[test]
fn subject_specificity_orders_key_tenant_role_everyone() {
    let s = set(&format!(
        r#"
version = 1
[[grant]]
name = "everyone"
subjects = ["*"]
tools = ["calc.add"]
[[grant]]
name = "role"
subjects = ["role:member+"]
tools = ["calc.add"]
[[grant]]
name = "tenant"
subjects = ["tenant:acme"]
tools = ["calc.add"]
[[grant]]
name = "tenant-role"
subjects = ["tenant:acme&role:member"]
tools = ["calc.add"]
[[grant]]
name = "key"
subjects = ["key:{KEY}"]
tools = ["calc.add"]
"#
    ));
    let tool = "calc.add";
    assert_eq!(winner(&s, &caller("acme", Role::Member), tool), "key");
    let other = |tenant, role| Subject { tenant, role, key_id: OTHER_KEY };
    assert_eq!(winner(&s, &other("acme", Role::Member), tool), "tenant-role");
    assert_eq!(winner(&s, &other("acme", Role::Viewer), tool), "tenant");
    assert_eq!(winner(&s, &other("globex", Role::Admin), tool), "role");
    assert_eq!(winner(&s, &other("globex", Role::Viewer), tool), "everyone");
}

#[test]
fn at_equal_subject_the_exact_tool_beats_prefix_beats_any_and_ties_go_to_the_earlier() {
    let s = set(r#"
version = 1
[[grant]]
name = "any"
subjects = ["*"]
tools = ["*"]
[[grant]]
name = "prefix"
subjects = ["*"]
tools = ["web.*"]
[[grant]]
name = "exact"
subjects = ["*"]
tools = ["web.fetch"]
[[grant]]
name = "exact-again"
subjects = ["*"]
tools = ["web.fetch"]
"#);
    let who = caller("acme", Role::Member);
    assert_eq!(winner(&s, &who, "web.fetch"), "exact");
    assert_eq!(winner(&s, &who, "web.search"), "prefix");
    assert_eq!(winner(&s, &who, "calc.add"), "any");
}

#[test]
fn earlier_files_win_ties() {
    let rule = |name: &str| format!("version = 1\n[[grant]]\nname = \"{name}\"\nsubjects = [\"*\"]\ntools = [\"*\"]\n");
    let (a, b) = (rule("from-a"), rule("from-b"));
    let s = PolicySet::parse([("a.toml", a.as_str()), ("b.toml", b.as_str())]).expect("valid");
    assert_eq!(winner(&s, &caller("acme", Role::Member), "x.y"), "from-a");
    assert_eq!(s.files().len(), 2);
}

#[test]
fn network_secrets_and_config_come_with_the_grant() {
    let s = set(r#"
version = 1
[secrets.gh]
source = "env:GH_TOKEN"
headers = { Authorization = "Bearer {secret}" }
hosts = ["api.github.com"]

[[grant]]
name = "fetch"
subjects = ["tenant:acme"]
tools = ["web.fetch"]
network = ["https://api.github.com", { url = "http://10.0.0.5:8080", allow_private = true }]
secrets = ["gh"]
config.web = { user_agent = "bot", retries = 2, ratio = 0.5, tags = ["a"], nested = { on = true } }
"#);
    let d = s.decide(&caller("acme", Role::Viewer), "web.fetch");
    let g = d.grant().expect("allowed");
    assert!(g.network_rule_for("https", "api.github.com", 443).is_some());
    assert!(g.network_rule_for("http", "10.0.0.5", 8080).is_some_and(|r| r.allow_private));
    assert!(g.network_rule_for("https", "github.com", 443).is_none());
    let secrets: Vec<_> = g.secrets_for("https", "api.github.com", 443).collect();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].source, SecretSource::Env("GH_TOKEN".into()));
    let headers: Vec<_> = secrets[0].render_headers("t0k").collect();
    assert_eq!(headers, vec![("Authorization", "Bearer t0k".to_owned())]);
    assert_eq!(g.secrets_for("https", "example.com", 443).count(), 0);
    assert_eq!(g.secrets_for("http", "api.github.com", 443).count(), 0, "a bare secret host is https only");
    assert_eq!(g.secrets_for("https", "api.github.com", 8443).count(), 0, "and only on port 443");
    assert_eq!(
        g.config_for("web"),
        Some(&serde_json::json!({
            "user_agent": "bot", "retries": 2, "ratio": 0.5, "tags": ["a"], "nested": {"on": true}
        }))
    );
}

#[test]
fn secrets_resolve_across_files() {
    let secrets = r#"
version = 1
[secrets.gh]
source = "file:gh-token"
headers = { Authorization = "token {secret}" }
hosts = ["*.github.com"]
"#;
    let grants = r#"
version = 1
[[grant]]
name = "fetch"
subjects = ["*"]
tools = ["web.fetch"]
network = ["https://api.github.com"]
secrets = ["gh"]
"#;
    let s = PolicySet::parse([("grants.toml", grants), ("secrets.toml", secrets)]).unwrap_or_else(|e| panic!("{e}"));
    let d = s.decide(&caller("a", Role::Admin), "web.fetch");
    assert_eq!(d.grant().expect("allowed").secrets[0].name, "gh");
}

#[test]
fn collects_several_errors_in_one_file_with_positions() {
    let text = r#"version = 1
[[grant]]
name = "Bad Name"
subjects = ["tenant:Acme", "role:owner"]
tools = ["calc"]
timeout = "5 parsecs"
memory = "8GiB"
network = ["ftp://x"]
secrets = ["nope"]
"#;
    let got = errors(&[("policies/teams.toml", text)]);
    let expected = [
        r#"policies/teams.toml:3:8: invalid name "Bad Name": use lowercase letters, digits, `-` and `_`, starting with a letter or digit"#,
        r#"policies/teams.toml:4:13: invalid subject "tenant:Acme": tenant name `Acme` may contain only lowercase letters, digits and `-`, and must start with a letter or digit"#,
        r#"policies/teams.toml:4:28: invalid subject "role:owner": unknown role `owner`: expected admin, member or viewer"#,
        r#"policies/teams.toml:5:10: invalid tool pattern "calc": tool names are plugin.tool; write calc.* for every tool of plugin calc"#,
        r#"policies/teams.toml:6:11: invalid duration "5 parsecs": unknown unit "parsecs": use ms, s, min or h"#,
        r#"policies/teams.toml:7:10: memory = 8GiB is out of range: must be between 64KiB and 4GiB"#,
        r#"policies/teams.toml:8:12: invalid network entry "ftp://x": scheme must be http or https"#,
        r#"policies/teams.toml:9:12: undefined secret "nope": no [secrets.nope] section in any policy file"#,
    ];
    assert_eq!(got, expected.join("\n"));
}

#[test]
fn syntax_errors_point_at_the_offending_key() {
    let got = errors(&[("p.toml", "version = 1\n[[grant]]\nname = \"g\"\nsubject = []\n")]);
    assert!(got.starts_with("p.toml:4:1: unknown field `subject`"), "{got}");
}

#[test]
fn errors_of_every_file_are_reported_together() {
    let got = errors(&[
        ("a.toml", "version = 2\n"),
        ("b.toml", "version = 1\n[defaults]\nfuel = 0\n"),
        ("c.toml", "version = 1\nnope = \n"),
    ]);
    let lines: Vec<_> = got.lines().collect();
    assert_eq!(lines.len(), 3, "{got}");
    assert!(lines[0].starts_with("a.toml:1:11: unsupported policy version 2"));
    assert!(lines[1].starts_with("b.toml:3:8: fuel = 0 is out of range"));
    assert!(lines[2].starts_with("c.toml:2:"));
}

#[test]
fn duplicates_across_files_name_both_places() {
    let a = "version = 1\n[defaults]\ntimeout = \"5s\"\n[secrets.s]\nsource = \"env:S\"\nheaders = { X-S = \"{secret}\" }\nhosts = [\"a.example\"]\n[[grant]]\nname = \"g\"\nsubjects = [\"*\"]\ntools = [\"*\"]\n";
    let b = "version = 1\n[defaults]\ntimeout = \"6s\"\nfuel = 5\n[secrets.s]\nsource = \"env:T\"\nheaders = { X-S = \"{secret}\" }\nhosts = [\"a.example\"]\n[[deny]]\nname = \"g\"\nsubjects = [\"*\"]\ntools = [\"*\"]\n";
    let got = errors(&[("a.toml", a), ("b.toml", b)]);
    assert_eq!(
        got,
        [
            "b.toml:3:11: defaults.timeout is also set at a.toml:3:11; set each default in one file only",
            "b.toml:5:10: duplicate secret name \"s\", first defined at a.toml:4:10",
            "b.toml:10:8: duplicate rule name \"g\", first defined at a.toml:9:8",
        ]
        .join("\n")
    );
}

#[test]
fn rejects_secrets_a_grant_cannot_send() {
    let got = errors(&[(
        "p.toml",
        r#"version = 1
[secrets.s]
source = "env:S"
headers = { Authorization = "Bearer {secret}" }
hosts = ["api.github.com"]
[[grant]]
name = "g"
subjects = ["*"]
tools = ["web.fetch"]
network = ["https://example.com"]
secrets = ["s"]
"#,
    )]);
    assert!(got.starts_with("p.toml:11:12: secret \"s\" applies only to hosts"), "{got}");
}

#[test]
fn rejects_secrets_whose_scheme_or_port_the_grant_never_uses() {
    for (hosts, network) in [
        (r#"["api.example.com"]"#, r#"["http://api.example.com"]"#),
        (r#"["https://api.example.com"]"#, r#"["https://api.example.com:8443"]"#),
        (r#"["http://10.0.0.5:8080"]"#, r#"[{ url = "http://10.0.0.5:8081", allow_private = true }]"#),
    ] {
        let text = format!(
            "version = 1\n[secrets.s]\nsource = \"env:S\"\nheaders = {{ X-S = \"{{secret}}\" }}\nhosts = {hosts}\n[[grant]]\nname = \"g\"\nsubjects = [\"*\"]\ntools = [\"web.fetch\"]\nnetwork = {network}\nsecrets = [\"s\"]\n"
        );
        let got = errors(&[("p.toml", text.as_str())]);
        assert!(got.contains("secret \"s\" applies only to hosts"), "{hosts} with {network}: {got}");
    }
    let ok = set(r#"
version = 1
[secrets.s]
source = "env:S"
headers = { X-S = "{secret}" }
hosts = ["http://10.0.0.5:8080"]
[[grant]]
name = "g"
subjects = ["*"]
tools = ["web.fetch"]
network = [{ url = "http://10.0.0.5:8080", allow_private = true }]
secrets = ["s"]
"#);
    let d = ok.decide(&caller("acme", Role::Member), "web.fetch");
    let g = d.grant().expect("allowed");
    assert_eq!(g.secrets_for("http", "10.0.0.5", 8080).count(), 1);
    assert_eq!(g.secrets[0].hosts[0].to_string(), "http://10.0.0.5:8080");
}

#[test]
fn rejects_malformed_secrets() {
    let got = errors(&[(
        "p.toml",
        r#"version = 1
[secrets.s]
source = "vault:x"
headers = { Host = "{secret}", X-A = "no placeholder", X-B = "{secret} {other}" }
hosts = ["http://a.example/path"]
"#,
    )]);
    let lines: Vec<_> = got.lines().collect();
    assert_eq!(lines.len(), 5, "{got}");
    assert!(lines[0].contains("must be env:VAR or file:KEY"));
    assert!(lines[1].contains("managed by the host"));
    assert!(lines[2].contains("must contain {secret}"));
    assert!(lines[3].contains("only the {secret} placeholder"));
    assert!(lines[4].contains("DNS label") || lines[4].contains("host"), "{got}");
}

#[test]
fn rejects_config_for_a_plugin_the_grant_never_reaches() {
    let got = errors(&[(
        "p.toml",
        "version = 1\n[[grant]]\nname = \"g\"\nsubjects = [\"*\"]\ntools = [\"calc.*\"]\nconfig.web = { a = 1 }\n",
    )]);
    assert_eq!(
        got,
        "p.toml:6:8: invalid config for plugin \"web\": this grant's tools never match web.*, so the config would never be used"
    );
}

#[test]
fn visible_tools_lists_only_allowed_ones() {
    let s = set(r#"
version = 1
[[grant]]
name = "g"
subjects = ["role:member+"]
tools = ["calc.*", "web.fetch"]
[[deny]]
name = "d"
subjects = ["tenant:acme"]
tools = ["web.fetch"]
"#);
    let all = ["calc.add", "web.fetch", "text.upper"];
    assert_eq!(s.visible_tools(&caller("globex", Role::Member), all), vec!["calc.add", "web.fetch"]);
    assert_eq!(s.visible_tools(&caller("acme", Role::Admin), all), vec!["calc.add"]);
    assert!(s.visible_tools(&caller("acme", Role::Viewer), all).is_empty());
}

#[test]
fn explain_renders_the_decision_and_every_setting_source() {
    let s = set(r#"
version = 1
[defaults]
timeout = "7s"
[[grant]]
name = "wide"
subjects = ["*"]
tools = ["*"]
[[grant]]
name = "narrow"
subjects = ["tenant:acme"]
tools = ["calc.*"]
fuel = 5000
"#);
    let text = s.explain(&caller("acme", Role::Member), "calc.add").to_string();
    let expected = format!(
        "ALLOW calc.add
  caller:  tenant acme, role member, key {KEY}
  rule:    grant \"narrow\" at p.toml:10:8
  settings:
    fuel                5000          from rule, p.toml:13:8
    timeout             7s            from defaults, p.toml:4:11
    memory              64MiB         built-in
    output              1MiB          built-in
    max_requests        10            built-in
    max_request_bytes   1MiB          built-in
    max_response_bytes  4MiB          built-in
    request_timeout     10s           built-in
    credits             0             built-in
    rate                unlimited     built-in
  network: none
  secrets: none
  models:  none
  config:  none
  also matched, not used: grant \"wide\" at p.toml:6:8
"
    );
    assert_eq!(text, expected);

    let denied = PolicySet::deny_all().explain(&caller("acme", Role::Member), "calc.add").to_string();
    assert!(denied.starts_with("DENY calc.add\n"), "{denied}");
    assert!(denied.contains("no rule grants this tool (default deny)"));
}

// ─── Properties ──────────────────────────────────────────────────────────────────────

/// Subjects, some matching the caller (tenant acme, member, KEY) and some not.
const SUBJECTS: &[&str] = &[
    "*",
    "role:member",
    "role:member+",
    "role:viewer+",
    "role:admin",
    "tenant:acme",
    "tenant:globex",
    "tenant:acme&role:member",
    "tenant:acme&role:admin",
    "key:key_0123456789abcdefghjk",
    "key:key_zzzzzzzzzzzzzzzzzzzz",
];
const TOOLS: &[&str] = &["*", "calc.*", "calc.add", "calc.sub", "web.*", "web.fetch"];
const TOOL: &str = "calc.add";

#[derive(Debug, Clone)]
struct G {
    id: usize,
    subject: &'static str,
    tool: &'static str,
}

fn grant_strategy() -> impl Strategy<Value = (usize, usize)> {
    (0..SUBJECTS.len(), 0..TOOLS.len())
}

fn to_toml(grants: &[G], deny: Option<(&str, &str)>) -> String {
    let mut text = String::from("version = 1\n");
    for g in grants {
        text.push_str(&format!(
            "[[grant]]\nname = \"g{}\"\nsubjects = [\"{}\"]\ntools = [\"{}\"]\nfuel = {}\n",
            g.id,
            g.subject,
            g.tool,
            g.id + 1
        ));
    }
    if let Some((subject, tool)) = deny {
        text.push_str(&format!("[[deny]]\nname = \"d\"\nsubjects = [\"{subject}\"]\ntools = [\"{tool}\"]\n"));
    }
    text
}

fn spec(g: &G) -> Option<Specificity> {
    let m = Matcher {
        subjects: vec![SubjectPattern::parse(g.subject).expect("valid")],
        tools: vec![ToolPattern::parse(g.tool).expect("valid")],
        resources: vec![],
    };
    m.matches(&caller("acme", Role::Member), TOOL)
}

fn build(raw: &[(usize, usize)]) -> Vec<G> {
    raw.iter().enumerate().map(|(id, &(s, t))| G { id, subject: SUBJECTS[s], tool: TOOLS[t] }).collect()
}

fn chosen_fuel(grants: &[G], deny: Option<(&str, &str)>) -> Option<u64> {
    set(&to_toml(grants, deny)).decide(&caller("acme", Role::Member), TOOL).grant().map(|g| g.limits.fuel)
}

proptest! {
    #[test]
    fn a_matching_deny_always_wins(
        raw in prop::collection::vec(grant_strategy(), 0..8),
        deny_subject in prop::sample::select(vec!["*", "role:member", "role:viewer+", "tenant:acme", "tenant:acme&role:member", "key:key_0123456789abcdefghjk"]),
        deny_tool in prop::sample::select(vec!["*", "calc.*", "calc.add"]),
    ) {
        let grants = build(&raw);
        prop_assert_eq!(chosen_fuel(&grants, Some((deny_subject, deny_tool))), None);
        let s = set(&to_toml(&grants, Some((deny_subject, deny_tool))));
        let decision = s.decide(&caller("acme", Role::Member), TOOL);
        prop_assert!(matches!(decision, Decision::Deny(Denial::Rule(_))));
    }

    #[test]
    fn the_winner_is_the_most_specific_then_earliest_match(
        raw in prop::collection::vec(grant_strategy(), 0..10),
    ) {
        let grants = build(&raw);
        let expected = grants
            .iter()
            .filter_map(|g| spec(g).map(|s| (s, g)))
            // max_by_key returns the last maximum; reverse so ties keep the earliest.
            .rev()
            .max_by_key(|(s, _)| *s)
            .map(|(_, g)| g.id as u64 + 1);
        prop_assert_eq!(chosen_fuel(&grants, None), expected);
    }

    #[test]
    fn a_less_specific_grant_never_changes_the_limits(
        raw in prop::collection::vec(grant_strategy(), 1..8),
        extra in grant_strategy(),
        position in any::<prop::sample::Index>(),
    ) {
        let mut grants = build(&raw);
        let before = chosen_fuel(&grants, None);
        let winner_spec = before
            .and_then(|fuel| grants.iter().find(|g| g.id as u64 + 1 == fuel))
            .and_then(spec);
        let extra = G { id: grants.len(), subject: SUBJECTS[extra.0], tool: TOOLS[extra.1] };
        let extra_spec = spec(&extra);
        prop_assume!(winner_spec.is_some());
        prop_assume!(extra_spec.is_none_or(|s| Some(s) < winner_spec));
        let at = position.index(grants.len() + 1);
        grants.insert(at, extra);
        prop_assert_eq!(chosen_fuel(&grants, None), before);
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        let _ = PolicySet::parse([("p.toml", text.as_str())]);
    }
}

#[test]
fn model_access_is_granted_only_with_tiers_and_capped_per_completion() {
    let s = set(r#"
version = 1
[[grant]]
name = "summarise"
subjects = ["*"]
tools = ["summarise.*"]
model_tiers = ["fast", "balanced", "small"]
model_max_tokens = 300

[[grant]]
name = "default-cap"
subjects = ["*"]
tools = ["other.*"]
model_tiers = ["best"]

[[grant]]
name = "calc"
subjects = ["*"]
tools = ["calc.*"]
"#);
    let grant = |tool: &str| s.decide(&caller("acme", Role::Member), tool).grant().cloned();
    let models = grant("summarise.text").and_then(|g| g.models).expect("granted");
    assert_eq!(
        models,
        ModelGrant { tiers: vec![crate::plugin::ModelTier::Small, crate::plugin::ModelTier::Medium], max_tokens: 300 }
    );
    let models = grant("other.x").and_then(|g| g.models).expect("granted");
    assert_eq!(
        (models.tiers, models.max_tokens),
        (vec![crate::plugin::ModelTier::Large], ModelGrant::DEFAULT_MAX_TOKENS)
    );
    assert_eq!(grant("calc.add").expect("allowed").models, None, "no model access unless granted");
    let explained = s.explain(&caller("acme", Role::Member), "summarise.text").to_string();
    assert!(
        explained.contains("  models:  fast, balanced (at most 300 answer tokens per completion)\n"),
        "{explained}"
    );
}

#[test]
fn malformed_model_grants_are_refused_with_their_place() {
    let text = r#"
version = 1
[[grant]]
name = "a"
subjects = ["*"]
tools = ["a.*"]
model_tiers = ["fast", "huge"]
model_max_tokens = 0

[[grant]]
name = "b"
subjects = ["*"]
tools = ["b.*"]
model_max_tokens = 10

[[grant]]
name = "c"
subjects = ["*"]
tools = ["c.*"]
model_tiers = []
"#;
    assert_eq!(
        errors(&[("p.toml", text)]),
        "p.toml:7:24: invalid model tier \"huge\": expected one of fast, balanced, best\n\
         p.toml:8:20: model_max_tokens = 0 is out of range: must be between 1 and 1000000\n\
         p.toml:14:20: model_max_tokens is set but model_tiers is not: list the tiers the grant's plugins may use\n\
         p.toml:20:15: `model_tiers` must list at least one entry"
    );
}

#[test]
fn resources_are_granted_per_plugin_apart_from_tools_and_denied_by_default() {
    let s = set(r#"
version = 1
[[grant]]
name = "members-notes"
subjects = ["role:member+"]
resources = ["notes.*"]
timeout = "2s"
[[grant]]
name = "admins-everything"
subjects = ["role:admin"]
tools = ["*"]
resources = ["*"]
[[deny]]
name = "no-notes-for-globex"
subjects = ["tenant:globex"]
resources = ["notes.*"]
"#);
    let resources = |s: &PolicySet, who: &Subject<'_>, plugin: &str| match s.decide_resources(who, plugin) {
        Decision::Allow(g) => g.rule.name.clone(),
        Decision::Deny(Denial::Rule(r)) => format!("deny:{}", r.name),
        Decision::Deny(Denial::NoGrant) => "default-deny".to_owned(),
    };
    let member = caller("acme", Role::Member);
    assert_eq!(resources(&s, &member, "notes"), "members-notes");
    assert_eq!(resources(&s, &member, "wiki"), "default-deny");
    assert_eq!(winner(&s, &member, "notes.search"), "default-deny", "a resources rule grants no tools");
    assert_eq!(resources(&s, &caller("acme", Role::Viewer), "notes"), "default-deny");
    assert_eq!(resources(&s, &caller("globex", Role::Admin), "notes"), "deny:no-notes-for-globex");
    assert_eq!(resources(&s, &caller("acme", Role::Admin), "notes"), "members-notes", "plugin.* beats *");
    assert_eq!(resources(&s, &caller("acme", Role::Admin), "wiki"), "admins-everything");
    let grant = s.decide_resources(&member, "notes");
    assert_eq!(grant.grant().expect("allowed").limits.timeout, Duration::from_secs(2));
    let explained = s.explain_resources(&caller("globex", Role::Admin), "notes").to_string();
    assert!(explained.starts_with("DENY resources of plugin notes\n"), "{explained}");
    assert!(explained.contains("deny \"no-notes-for-globex\" at p.toml:"), "{explained}");
}

#[test]
fn a_rule_without_tools_or_resources_and_bad_resource_patterns_are_refused() {
    let text = r#"version = 1
[[grant]]
name = "nothing"
subjects = ["*"]
[[grant]]
name = "bare"
subjects = ["*"]
resources = ["notes"]
"#;
    let all = errors(&[("p.toml", text)]);
    assert!(all.contains("p.toml:3:8: a rule must list `tools`, `resources` or both"), "{all}");
    assert!(
        all.contains(
            "invalid resource pattern \"notes\": resources are granted per plugin: write notes.* for plugin notes"
        ),
        "{all}"
    );
}
