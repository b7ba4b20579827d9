//! Stage two: raw files → a validated, compiled [`PolicySet`]. Collects every error it
//! can instead of stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::error::{Location, PolicyError, PolicyErrorKind as Kind, PolicyErrors, SourceMap};
use super::matcher::{Matcher, SubjectPattern, ToolPattern};
use super::network::{NetworkRule, SecretTarget};
use super::raw::{RawDefaults, RawDeny, RawFile, RawGrant, RawSecret};
use super::units::{self, DisplayDuration, DisplaySize, Rate};
use super::{
    CompiledDeny, CompiledGrant, Grant, Limits, ModelGrant, PolicySet, RuleInfo, RuleKind, SecretGrant, SecretSource,
    Setting, Source,
};

/// The only format version this build reads.
const VERSION: i64 = 1;

/// Largest credit cost per call a policy may set.
const MAX_CREDITS: u64 = 1_000_000_000;

/// Largest number of calls a rate may admit per window.
const MAX_RATE_CALLS: u32 = 1_000_000;

/// One policy file whose TOML parsed into the expected shape; its values are checked by
/// [`PolicySet::compile`].
#[derive(Debug)]
pub struct PolicyFile {
    map: SourceMap,
    raw: RawFile,
}

impl PolicyFile {
    /// Parses `text`; `name` is what error messages call the file (its path).
    pub fn parse(name: &str, text: &str) -> Result<Self, PolicyErrors> {
        let map = SourceMap::new(name, text);
        match toml::from_str::<RawFile>(text) {
            Ok(raw) => Ok(Self { map, raw }),
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let message = e.message().trim_end().replace('\n', "; ");
                Err(PolicyErrors(vec![PolicyError { location: map.location(offset), kind: Kind::Syntax(message) }]))
            }
        }
    }

    /// The name the file was parsed under.
    pub fn name(&self) -> &str {
        self.map.file()
    }
}

type Located<T> = Option<(T, Location)>;

/// Settings as set in one place (a grant or `[defaults]`), each with its location.
#[derive(Debug, Default)]
struct PartialSettings {
    fuel: Located<u64>,
    timeout: Located<Duration>,
    memory: Located<u64>,
    output: Located<u64>,
    max_requests: Located<u32>,
    max_request_bytes: Located<u64>,
    max_response_bytes: Located<u64>,
    request_timeout: Located<Duration>,
    credits: Located<u64>,
    rate: Located<Rate>,
}

macro_rules! each_setting {
    ($m:ident) => {
        $m!(
            fuel,
            timeout,
            memory,
            output,
            max_requests,
            max_request_bytes,
            max_response_bytes,
            request_timeout,
            credits,
            rate
        )
    };
}

impl PartialSettings {
    /// Adds another file's defaults; a key set in both is an error at the second place.
    fn merge(&mut self, other: PartialSettings, errors: &mut Vec<PolicyError>) {
        macro_rules! merge {
            ($($field:ident),*) => {$(
                if let Some((value, at)) = other.$field {
                    match &self.$field {
                        Some((_, first)) => errors.push(PolicyError {
                            location: at,
                            kind: Kind::ConflictingDefault {
                                key: stringify!($field),
                                first: first.clone(),
                            },
                        }),
                        None => self.$field = Some((value, at)),
                    }
                }
            )*};
        }
        each_setting!(merge);
    }
}

/// The effective value: the grant's, else the default's, else the built-in one.
fn pick<T: Copy>(rule: &Located<T>, defaults: &Located<T>, built_in: T) -> (T, Source) {
    match (rule, defaults) {
        (Some((v, at)), _) => (*v, Source::Rule(at.clone())),
        (None, Some((v, at))) => (*v, Source::Defaults(at.clone())),
        (None, None) => (built_in, Source::BuiltIn),
    }
}

/// Collects errors for one file.
struct Checker<'a> {
    map: &'a SourceMap,
    errors: &'a mut Vec<PolicyError>,
}

impl Checker<'_> {
    fn push(&mut self, span: &Range<usize>, kind: Kind) {
        self.errors.push(self.map.error(span, kind));
    }

    fn at(&self, span: &Range<usize>) -> Location {
        self.map.location(span.start)
    }

    fn name(&mut self, name: &Spanned<String>) -> bool {
        let n = name.get_ref();
        let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
        let reason = if n.is_empty() || n.len() > 64 {
            "must be 1 to 64 characters long"
        } else if !n.bytes().all(ok_char) || !n.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            "use lowercase letters, digits, `-` and `_`, starting with a letter or digit"
        } else {
            return true;
        };
        self.push(&name.span(), Kind::InvalidName { name: n.clone(), reason: reason.to_owned() });
        false
    }

    fn bounded<T: PartialOrd + Copy>(
        &mut self,
        field: Setting,
        value: T,
        span: &Range<usize>,
        (min, max): (T, T),
        render: impl Fn(T) -> String,
    ) -> Located<T> {
        if value < min || value > max {
            self.push(
                span,
                Kind::OutOfRange { field: field.key(), value: render(value), min: render(min), max: render(max) },
            );
            return None;
        }
        Some((value, self.at(span)))
    }

    fn duration(&mut self, field: Setting, raw: Option<Spanned<String>>, max: Duration) -> Located<Duration> {
        let raw = raw?;
        let span = raw.span();
        match units::parse_duration(raw.get_ref()) {
            Ok(d) => self.bounded(field, d, &span, (Duration::from_millis(1), max), |d| DisplayDuration(d).to_string()),
            Err(reason) => {
                self.push(&span, Kind::InvalidDuration { value: raw.into_inner(), reason });
                None
            }
        }
    }

    fn size(&mut self, field: Setting, raw: Option<Spanned<String>>, bounds: (u64, u64)) -> Located<u64> {
        let raw = raw?;
        let span = raw.span();
        match units::parse_size(raw.get_ref()) {
            Ok(b) => self.bounded(field, b, &span, bounds, |b| DisplaySize(b).to_string()),
            Err(reason) => {
                self.push(&span, Kind::InvalidSize { value: raw.into_inner(), reason });
                None
            }
        }
    }

    fn settings(&mut self, raw: RawDefaults) -> PartialSettings {
        let caps = Limits::CAPS;
        let count = |n: u64| n.to_string();
        let fuel = raw.fuel.and_then(|v| self.bounded(Setting::Fuel, *v.get_ref(), &v.span(), (1, caps.fuel), count));
        let max_requests = raw.max_requests.and_then(|v| {
            let (n, at) =
                self.bounded(Setting::MaxRequests, *v.get_ref(), &v.span(), (0, u64::from(caps.max_requests)), count)?;
            Some((u32::try_from(n).ok()?, at))
        });
        let credits =
            raw.credits.and_then(|v| self.bounded(Setting::Credits, *v.get_ref(), &v.span(), (0, MAX_CREDITS), count));
        let rate = raw.rate.and_then(|raw| {
            let span = raw.span();
            match units::parse_rate(raw.get_ref()) {
                Ok(rate) if rate.calls > MAX_RATE_CALLS => {
                    self.push(
                        &span,
                        Kind::OutOfRange {
                            field: Setting::Rate.key(),
                            value: rate.to_string(),
                            min: "1 call".to_owned(),
                            max: format!("{MAX_RATE_CALLS} calls per window"),
                        },
                    );
                    None
                }
                Ok(rate) => Some((rate, self.at(&span))),
                Err(reason) => {
                    self.push(&span, Kind::InvalidRate { value: raw.into_inner(), reason });
                    None
                }
            }
        });
        PartialSettings {
            fuel,
            timeout: self.duration(Setting::Timeout, raw.timeout, caps.timeout),
            memory: self.size(Setting::Memory, raw.memory, (64 << 10, caps.memory_bytes)),
            output: self.size(Setting::Output, raw.output, (1, caps.output_bytes)),
            max_requests,
            max_request_bytes: self.size(Setting::MaxRequestBytes, raw.max_request_bytes, (0, caps.max_request_bytes)),
            max_response_bytes: self.size(
                Setting::MaxResponseBytes,
                raw.max_response_bytes,
                (0, caps.max_response_bytes),
            ),
            request_timeout: self.duration(Setting::RequestTimeout, raw.request_timeout, caps.request_timeout),
            credits,
            rate,
        }
    }

    fn matcher(
        &mut self,
        name: &Spanned<String>,
        subjects: Spanned<Vec<Spanned<String>>>,
        tools: Option<Spanned<Vec<Spanned<String>>>>,
        resources: Option<Spanned<Vec<Spanned<String>>>>,
    ) -> Matcher {
        if subjects.get_ref().is_empty() {
            self.push(&subjects.span(), Kind::EmptyList { field: "subjects" });
        }
        match (&tools, &resources) {
            (None, None) => self.push(&name.span(), Kind::NothingCovered),
            (Some(tools), _) if tools.get_ref().is_empty() => {
                self.push(&tools.span(), Kind::EmptyList { field: "tools" });
            }
            (_, Some(resources)) if resources.get_ref().is_empty() => {
                self.push(&resources.span(), Kind::EmptyList { field: "resources" });
            }
            _ => {}
        }
        let subjects = subjects
            .into_inner()
            .into_iter()
            .filter_map(|s| match SubjectPattern::parse(s.get_ref()) {
                Ok(p) => Some(p),
                Err(reason) => {
                    let span = s.span();
                    self.push(&span, Kind::InvalidSubject { subject: s.into_inner(), reason });
                    None
                }
            })
            .collect();
        let tools = tools
            .map(Spanned::into_inner)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| match ToolPattern::parse(t.get_ref()) {
                Ok(p) => Some(p),
                Err(reason) => {
                    let span = t.span();
                    self.push(&span, Kind::InvalidToolPattern { pattern: t.into_inner(), reason });
                    None
                }
            })
            .collect();
        let resources = resources
            .map(Spanned::into_inner)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| match ToolPattern::parse_resources(r.get_ref()) {
                Ok(p) => Some(p),
                Err(reason) => {
                    let span = r.span();
                    self.push(&span, Kind::InvalidResourcePattern { pattern: r.into_inner(), reason });
                    None
                }
            })
            .collect();
        Matcher { subjects, tools, resources }
    }

    fn secret(&mut self, name: &Spanned<String>, raw: RawSecret) -> Option<SecretGrant> {
        let name_ok = self.name(name);
        let n = name.get_ref();
        let invalid = |this: &mut Self, span: &Range<usize>, reason: String| {
            this.push(span, Kind::InvalidSecret { name: n.clone(), reason });
        };
        let source = match parse_secret_source(raw.source.get_ref()) {
            Ok(s) => Some(s),
            Err(reason) => {
                invalid(self, &raw.source.span(), reason);
                None
            }
        };
        if raw.headers.is_empty() {
            invalid(
                self,
                &name.span(),
                "`headers` must set at least one header, like Authorization = \"Bearer {secret}\"".to_owned(),
            );
        }
        let mut headers = Vec::with_capacity(raw.headers.len());
        for (header, template) in raw.headers {
            match check_header(header.get_ref(), template.get_ref()) {
                Ok(()) => headers.push((header.into_inner(), template.into_inner())),
                Err((on_name, reason)) => {
                    let span = if on_name { header.span() } else { template.span() };
                    invalid(self, &span, reason);
                }
            }
        }
        if raw.hosts.get_ref().is_empty() {
            invalid(self, &raw.hosts.span(), "`hosts` must list at least one host the secret is sent to".to_owned());
        }
        let mut hosts = Vec::new();
        for host in raw.hosts.into_inner() {
            match SecretTarget::parse(host.get_ref()) {
                Ok(h) => hosts.push(h),
                Err(reason) => {
                    invalid(self, &host.span(), format!("host {:?}: {reason}", host.get_ref()));
                }
            }
        }
        Some(SecretGrant {
            name: n.clone(),
            source: source.filter(|_| name_ok)?,
            headers,
            hosts,
            location: self.at(&name.span()),
        })
    }

    fn plugin_config(
        &mut self,
        plugin: &Spanned<String>,
        value: Spanned<toml::Value>,
        matcher: &Matcher,
    ) -> Option<serde_json::Value> {
        let p = plugin.get_ref();
        let invalid = |this: &mut Self, span: &Range<usize>, reason: String| {
            this.push(span, Kind::InvalidPluginConfig { plugin: p.clone(), reason });
        };
        let valid_name = !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            invalid(self, &plugin.span(), "a plugin name has letters, digits, `_` and `-`".to_owned());
            return None;
        }
        let reaches = matcher.tools.iter().any(|t| t.may_cover_plugin(p))
            || matcher.resources.iter().any(|r| r.covers_resources_of(p).is_some());
        if !reaches {
            invalid(
                self,
                &plugin.span(),
                format!("this grant's tools never match {p}.*, so the config would never be used"),
            );
            return None;
        }
        let span = value.span();
        if !value.get_ref().is_table() {
            invalid(self, &span, "expected a table, like config.web = { key = \"value\" }".to_owned());
            return None;
        }
        match toml_to_json(value.into_inner()) {
            Ok(json) => Some(json),
            Err(reason) => {
                invalid(self, &span, reason);
                None
            }
        }
    }
}

fn parse_secret_source(source: &str) -> Result<SecretSource, String> {
    if let Some(var) = source.strip_prefix("env:") {
        let ok = var.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        return if ok {
            Ok(SecretSource::Env(var.to_owned()))
        } else {
            Err(format!("source {source:?}: {var:?} is not an environment variable name"))
        };
    }
    if let Some(key) = source.strip_prefix("file:") {
        let ok = !key.is_empty()
            && !key.starts_with('.')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        return if ok {
            Ok(SecretSource::File(key.to_owned()))
        } else {
            Err(format!(
                "source {source:?}: a file key has letters, digits, `_`, `-` and `.` (no `/`, not starting with `.`)"
            ))
        };
    }
    Err(format!("source {source:?} must be env:VAR or file:KEY"))
}

/// `Err((true, _))` blames the header name, `Err((false, _))` the template.
fn check_header(name: &str, template: &str) -> Result<(), (bool, String)> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err((true, format!("{name:?} is not a valid header name")));
    }
    const RESERVED: [&str; 5] = ["host", "content-length", "transfer-encoding", "connection", "te"];
    if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
        return Err((true, format!("header {name:?} is managed by the host and cannot be set")));
    }
    if !template.contains(SecretGrant::PLACEHOLDER) {
        return Err((false, format!("header {name} template must contain {{secret}}")));
    }
    if template.replace(SecretGrant::PLACEHOLDER, "").contains(['{', '}']) {
        return Err((false, format!("header {name} template may use only the {{secret}} placeholder")));
    }
    if template.chars().any(|c| c.is_control()) {
        return Err((false, format!("header {name} template contains a control character")));
    }
    Ok(())
}

fn toml_to_json(value: toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match value {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(f).map(J::Number).ok_or_else(|| format!("{f} has no JSON representation"))?
        }
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.into_iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(table) => {
            J::Object(table.into_iter().map(|(k, v)| Ok((k, toml_to_json(v)?))).collect::<Result<_, String>>()?)
        }
    })
}

/// A grant validated within its file; secrets are resolved once all files are read.
struct PendingGrant {
    rule: RuleInfo,
    matcher: Matcher,
    settings: PartialSettings,
    network: Vec<NetworkRule>,
    secrets: Vec<(String, Location)>,
    config: BTreeMap<String, serde_json::Value>,
    models: Option<ModelGrant>,
}

/// One file's contribution.
#[derive(Default)]
struct FileParts {
    defaults: PartialSettings,
    secrets: Vec<SecretGrant>,
    /// Secrets defined but invalid (already reported): grants naming them are not
    /// reported again as undefined.
    invalid_secrets: Vec<String>,
    grants: Vec<PendingGrant>,
    denies: Vec<(Matcher, RuleInfo)>,
}

fn check_file(file: PolicyFile, errors: &mut Vec<PolicyError>) -> FileParts {
    let PolicyFile { map, raw } = file;
    let mut c = Checker { map: &map, errors };
    let mut parts = FileParts::default();
    if *raw.version.get_ref() != VERSION {
        c.push(&raw.version.span(), Kind::UnsupportedVersion { found: *raw.version.get_ref() });
        // Nothing else in a file of another version can be read with confidence.
        return parts;
    }
    if let Some(defaults) = raw.defaults {
        parts.defaults = c.settings(defaults);
    }
    for (name, secret) in raw.secrets {
        let errors_before = c.errors.len();
        match c.secret(&name, secret) {
            Some(s) if c.errors.len() == errors_before => parts.secrets.push(s),
            _ => parts.invalid_secrets.push(name.into_inner()),
        }
    }
    for (index, grant) in raw.grant.into_iter().enumerate() {
        parts.grants.push(check_grant(&mut c, index, grant.into_inner()));
    }
    for (index, deny) in raw.deny.into_iter().enumerate() {
        let RawDeny { name, subjects, tools, resources } = deny.into_inner();
        c.name(&name);
        let matcher = c.matcher(&name, subjects, tools, resources);
        let rule = RuleInfo { kind: RuleKind::Deny, location: c.at(&name.span()), name: name.into_inner(), index };
        parts.denies.push((matcher, rule));
    }
    parts
}

fn check_grant(c: &mut Checker<'_>, index: usize, mut raw: RawGrant) -> PendingGrant {
    c.name(&raw.name);
    let settings = c.settings(raw.take_settings());
    let RawGrant { name, subjects, tools, resources, network, secrets, config, model_tiers, model_max_tokens, .. } =
        raw;
    let models = model_grant(c, model_tiers, model_max_tokens);
    let matcher = c.matcher(&name, subjects, tools, resources);
    let network = network
        .into_iter()
        .filter_map(|entry| {
            let span = entry.span();
            let entry = entry.into_inner();
            match NetworkRule::parse(&entry.url, entry.allow_private) {
                Ok(rule) => Some(rule),
                Err(reason) => {
                    c.push(&span, Kind::InvalidNetworkEntry { entry: entry.url, reason });
                    None
                }
            }
        })
        .collect();
    let secrets = secrets
        .into_iter()
        .map(|s| {
            let at = c.at(&s.span());
            (s.into_inner(), at)
        })
        .collect();
    let config = config
        .into_iter()
        .filter_map(|(plugin, value)| {
            let json = c.plugin_config(&plugin, value, &matcher)?;
            Some((plugin.into_inner(), json))
        })
        .collect();
    PendingGrant {
        rule: RuleInfo { kind: RuleKind::Grant, location: c.at(&name.span()), name: name.into_inner(), index },
        matcher,
        settings,
        network,
        secrets,
        config,
        models,
    }
}

/// `model_tiers` and `model_max_tokens`: none, or the tiers with the per-call cap
/// (default [`ModelGrant::DEFAULT_MAX_TOKENS`]).
fn model_grant(
    c: &mut Checker<'_>,
    tiers: Option<Spanned<Vec<Spanned<String>>>>,
    max_tokens: Option<Spanned<u64>>,
) -> Option<ModelGrant> {
    let Some(tiers) = tiers else {
        if let Some(max) = max_tokens {
            c.push(&max.span(), Kind::ModelTokensWithoutTiers);
        }
        return None;
    };
    if tiers.get_ref().is_empty() {
        c.push(&tiers.span(), Kind::EmptyList { field: "model_tiers" });
        return None;
    }
    let mut granted = Vec::new();
    for tier in tiers.into_inner() {
        match crate::llm::parse_tier(tier.get_ref()) {
            Some(parsed) if !granted.contains(&parsed) => granted.push(parsed),
            Some(_) => {}
            None => c.push(&tier.span(), Kind::InvalidModelTier { tier: tier.into_inner() }),
        }
    }
    let max_tokens = match max_tokens {
        None => ModelGrant::DEFAULT_MAX_TOKENS,
        Some(max) => {
            let value = *max.get_ref();
            match u32::try_from(value) {
                Ok(value) if (1..=ModelGrant::MAX_TOKENS_CAP).contains(&value) => value,
                _ => {
                    c.push(
                        &max.span(),
                        Kind::OutOfRange {
                            field: "model_max_tokens",
                            value: value.to_string(),
                            min: "1".to_owned(),
                            max: ModelGrant::MAX_TOKENS_CAP.to_string(),
                        },
                    );
                    return None;
                }
            }
        }
    };
    Some(ModelGrant { tiers: granted, max_tokens })
}

fn resolve_grant(
    pending: PendingGrant,
    defaults: &PartialSettings,
    secrets: &HashMap<String, SecretGrant>,
    invalid_secrets: &[String],
    errors: &mut Vec<PolicyError>,
) -> CompiledGrant {
    let s = &pending.settings;
    let b = Limits::BUILT_IN;
    let (fuel, fuel_src) = pick(&s.fuel, &defaults.fuel, b.fuel);
    let (timeout, timeout_src) = pick(&s.timeout, &defaults.timeout, b.timeout);
    let (memory_bytes, memory_src) = pick(&s.memory, &defaults.memory, b.memory_bytes);
    let (output_bytes, output_src) = pick(&s.output, &defaults.output, b.output_bytes);
    let (max_requests, mr_src) = pick(&s.max_requests, &defaults.max_requests, b.max_requests);
    let (max_request_bytes, mrq_src) = pick(&s.max_request_bytes, &defaults.max_request_bytes, b.max_request_bytes);
    let (max_response_bytes, mrs_src) = pick(&s.max_response_bytes, &defaults.max_response_bytes, b.max_response_bytes);
    let (request_timeout, rt_src) = pick(&s.request_timeout, &defaults.request_timeout, b.request_timeout);
    let (credits, credits_src) = pick(&s.credits, &defaults.credits, 0);
    let rule_rate = s.rate.as_ref().map(|(r, at)| (Some(*r), at.clone()));
    let default_rate = defaults.rate.as_ref().map(|(r, at)| (Some(*r), at.clone()));
    let (rate, rate_src) = pick(&rule_rate, &default_rate, None);
    let mut granted = Vec::with_capacity(pending.secrets.len());
    for (name, at) in pending.secrets {
        let Some(secret) = secrets.get(&name) else {
            if invalid_secrets.contains(&name) {
                continue;
            }
            errors.push(PolicyError { location: at, kind: Kind::UndefinedSecret { name } });
            continue;
        };
        let reachable = secret.hosts.iter().any(|t| pending.network.iter().any(|n| t.reachable_through(n)));
        if !reachable {
            errors.push(PolicyError { location: at, kind: Kind::UnreachableSecret { name } });
            continue;
        }
        if !granted.iter().any(|g: &SecretGrant| g.name == secret.name) {
            granted.push(secret.clone());
        }
    }
    let grant = Grant {
        rule: pending.rule,
        limits: Limits {
            fuel,
            timeout,
            memory_bytes,
            output_bytes,
            max_requests,
            max_request_bytes,
            max_response_bytes,
            request_timeout,
        },
        credits,
        rate,
        network: pending.network,
        secrets: granted,
        config: pending.config,
        models: pending.models,
        sources: [
            fuel_src,
            timeout_src,
            memory_src,
            output_src,
            mr_src,
            mrq_src,
            mrs_src,
            rt_src,
            credits_src,
            rate_src,
        ],
    };
    CompiledGrant { matcher: pending.matcher, grant: Arc::new(grant) }
}

impl PolicySet {
    /// Validates and compiles parsed files (in order: earlier files win specificity
    /// ties). Reports every error found.
    pub fn compile(files: impl IntoIterator<Item = PolicyFile>) -> Result<Self, PolicyErrors> {
        let mut errors = Vec::new();
        let mut names = Vec::new();
        let mut defaults = PartialSettings::default();
        let mut secrets: HashMap<String, SecretGrant> = HashMap::new();
        let mut rule_names: HashMap<String, Location> = HashMap::new();
        let mut invalid_secrets = Vec::new();
        let mut grants = Vec::new();
        let mut denies = Vec::new();
        for file in files {
            names.push(Arc::clone(file.map.file()));
            let parts = check_file(file, &mut errors);
            defaults.merge(parts.defaults, &mut errors);
            invalid_secrets.extend(parts.invalid_secrets);
            for secret in parts.secrets {
                if let Some(first) = secrets.get(&secret.name) {
                    errors.push(PolicyError {
                        location: secret.location.clone(),
                        kind: Kind::Duplicate {
                            what: "secret",
                            name: secret.name.clone(),
                            first: first.location.clone(),
                        },
                    });
                } else {
                    secrets.insert(secret.name.clone(), secret);
                }
            }
            let rules = parts.grants.iter().map(|g| &g.rule).chain(parts.denies.iter().map(|(_, r)| r));
            for rule in rules {
                if let Some(first) = rule_names.get(&rule.name) {
                    errors.push(PolicyError {
                        location: rule.location.clone(),
                        kind: Kind::Duplicate { what: "rule", name: rule.name.clone(), first: first.clone() },
                    });
                } else {
                    rule_names.insert(rule.name.clone(), rule.location.clone());
                }
            }
            grants.extend(parts.grants);
            denies.extend(parts.denies);
        }
        let grants =
            grants.into_iter().map(|g| resolve_grant(g, &defaults, &secrets, &invalid_secrets, &mut errors)).collect();
        if !errors.is_empty() {
            sort_errors(&mut errors, &names);
            return Err(PolicyErrors(errors));
        }
        Ok(PolicySet {
            grants,
            denies: denies.into_iter().map(|(matcher, rule)| CompiledDeny { matcher, rule: Arc::new(rule) }).collect(),
            files: names,
        })
    }
}

/// Orders errors by file (in the order given), then line and column; errors at the same
/// place keep the order they were found in.
pub(crate) fn sort_errors(errors: &mut [PolicyError], files: &[Arc<str>]) {
    errors.sort_by_key(|e| {
        (files.iter().position(|f| *f == e.location.file).unwrap_or(usize::MAX), e.location.line, e.location.column)
    });
}
