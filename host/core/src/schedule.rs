//! Schedules: a message posted on a cron schedule, into a session or into a new session
//! made from a template.
//!
//! A [`Schedule`] holds a cron expression (5 fields, or 6 with seconds first) read in an
//! IANA time zone ([`CronSpec`], parsed by `croner`, whose daylight-saving rules follow
//! the Open Cron Pattern Specification: a fixed time that falls in a spring-forward gap
//! fires right after the gap, a fixed time repeated by a fall-back fires once), the
//! target, the message, and `next_fire_at`, the instant of its next fire. Firing is
//! decided here ([`Schedule::due`]), as a pure function of the time: the host's tick
//! asks it for every due schedule and enqueues one job per fire, keyed by schedule and
//! fire time ([`fire_job_key`]), so a fire happens once however many replicas tick.
//!
//! After downtime the catch-up policy decides: [`CatchUp::Once`] runs the missed fires
//! as one (the latest), [`CatchUp::Skip`] runs none (a fire counts as missed when it is
//! older than the grace the host allows a tick to be late).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::id::{Id, IdKind, TenantId};
use crate::run::{RunInputError, RunLimits, SessionId, Strategy};

/// Marker for schedule identifiers (`sch_…`).
#[derive(Debug)]
pub enum ScheduleKind {}
impl IdKind for ScheduleKind {
    const PREFIX: &'static str = "sch";
}

/// A schedule's identifier.
pub type ScheduleId = Id<ScheduleKind>;

/// Longest cron expression, in bytes.
pub const MAX_CRON_BYTES: usize = 200;

/// The shortest period a schedule may have unless configured otherwise.
pub const DEFAULT_MIN_PERIOD: Duration = Duration::from_secs(60);

/// Consecutive fires checked against the minimum period when a schedule is created.
const PERIOD_CHECK_FIRES: usize = 512;

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid cron expression `{expression}`: {reason}")]
    Cron {
        /// The expression as given (at most 200 bytes).
        expression: String,
        /// What is wrong, in croner's words.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone `{0}`: use an IANA name such as `Europe/Paris` or `UTC`")]
    TimeZone(String),
    /// The expression fires more often than the configured floor.
    #[error("`{expression}` fires every {gap_secs} s at times; schedules may fire at most once every {min_secs} s")]
    TooFrequent {
        /// The expression.
        expression: String,
        /// The shortest gap seen between two fires, in seconds.
        gap_secs: u64,
        /// The floor, in seconds.
        min_secs: u64,
    },
    /// The expression never fires (e.g. February 30th).
    #[error("`{0}` never fires")]
    Never(String),
    /// The target or message is invalid.
    #[error(transparent)]
    Input(#[from] RunInputError),
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl CronSpec {
    /// Parses `expression` (5 fields `min hour dom month dow`, or 6 with seconds first)
    /// in the IANA `time_zone`.
    pub fn parse(expression: &str, time_zone: &str) -> Result<Self, ScheduleError> {
        let expression = expression.trim();
        let cron_error = |reason: String| ScheduleError::Cron {
            expression: expression.chars().take(MAX_CRON_BYTES).collect(),
            reason: tidy(&reason),
        };
        if expression.is_empty() || expression.len() > MAX_CRON_BYTES {
            return Err(cron_error(format!("must be 1 to {MAX_CRON_BYTES} bytes")));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| cron_error(e.to_string()))?;
        let zone = chrono_tz::Tz::from_str(time_zone.trim())
            .map_err(|_| ScheduleError::TimeZone(time_zone.chars().take(64).collect()))?;
        Ok(Self { cron, zone })
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        self.cron.pattern.as_str()
    }

    /// The first fire strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| ms(t.with_timezone(&Utc)))
    }

    /// The latest fire at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        self.cron.find_previous_occurrence(&local, true).ok().map(|t| ms(t.with_timezone(&Utc)))
    }

    /// The next `n` fires after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut fires = Vec::with_capacity(n);
        let mut at = after;
        while fires.len() < n {
            let Some(next) = self.next_after(at) else { break };
            fires.push(next);
            at = next;
        }
        fires
    }

    /// Refuses an expression whose fires come closer than `min_period` (checked over the
    /// next fires from `from`; the tick enforces the floor on every fire as well).
    pub fn check_period(&self, from: DateTime<Utc>, min_period: Duration) -> Result<(), ScheduleError> {
        let fires = self.upcoming(from, PERIOD_CHECK_FIRES);
        if fires.is_empty() {
            return Err(ScheduleError::Never(self.expression().to_owned()));
        }
        let min_ms = i64::try_from(min_period.as_millis()).unwrap_or(i64::MAX);
        if let Some(gap) = fires.windows(2).map(|w| (w[1] - w[0]).num_milliseconds()).min()
            && gap < min_ms
        {
            return Err(ScheduleError::TooFrequent {
                expression: self.expression().to_owned(),
                gap_secs: u64::try_from(gap / 1000).unwrap_or(0),
                min_secs: min_period.as_secs(),
            });
        }
        Ok(())
    }
}

/// croner's message, lowercase and without its trailing period.
fn tidy(reason: &str) -> String {
    let reason = reason.trim().trim_end_matches('.');
    let mut chars = reason.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Truncated to the millisecond, as the stores keep time.
fn ms(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// What a schedule does after downtime, when fires were missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// The missed fires run as one fire (the latest).
    Once,
    /// Missed fires are skipped; the next fire is in the future.
    Skip,
}

impl CatchUp {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Once => "once",
            CatchUp::Skip => "skip",
        }
    }

    /// A policy by its stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [CatchUp::Once, CatchUp::Skip].into_iter().find(|c| c.as_str() == name)
    }
}

/// A session made for each fire of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTemplate {
    /// The new session's title.
    pub title: String,
    /// The team, in order.
    pub personas: Vec<String>,
    /// How the next speaker is picked.
    pub strategy: Strategy,
    /// Limits of each run.
    pub limits: RunLimits,
}

/// Where a schedule posts its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ScheduleTarget {
    /// An existing session of the schedule's tenant.
    Session {
        /// The session.
        session: SessionId,
    },
    /// A new session per fire.
    Template(SessionTemplate),
}

/// A schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Its id.
    pub id: ScheduleId,
    /// Its tenant.
    pub tenant: TenantId,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone the expression is read in.
    pub time_zone: String,
    /// Where the message goes.
    pub target: ScheduleTarget,
    /// The message posted at each fire.
    pub message: String,
    /// What to do with fires missed during downtime.
    pub catch_up: CatchUp,
    /// A paused schedule does not fire.
    pub paused: bool,
    /// The next fire (`None` when the expression has no fire left).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The key that created it: fires post as this key.
    pub created_by: String,
    /// That key's role when it created the schedule (the runs' role).
    pub role: Role,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last changed (paused, resumed, advanced).
    pub updated_at: DateTime<Utc>,
}

/// A fire that posted its message (kept as the schedule's history; its row is what
/// makes a retried fire job post nothing again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleFire {
    /// The schedule.
    pub schedule: ScheduleId,
    /// The fire time it ran for.
    pub fire_at: DateTime<Utc>,
    /// The session the message went to.
    pub session: SessionId,
    /// The run the message started.
    pub run: crate::run::RunId,
    /// When it was posted.
    pub at: DateTime<Utc>,
}

/// What the tick does with a due schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The fire to run (its time), `None` when the missed fires are skipped.
    pub fire_at: Option<DateTime<Utc>>,
    /// The next fire after this one (`None`: none left).
    pub next: Option<DateTime<Utc>>,
}

impl Schedule {
    /// The parsed expression.
    pub fn spec(&self) -> Result<CronSpec, ScheduleError> {
        CronSpec::parse(&self.cron, &self.time_zone)
    }

    /// What to do at `now`: `None` when the schedule is paused or not due. A fire that
    /// is at most `grace` old is on time; older fires were missed (downtime) and follow
    /// the catch-up policy. The next fire is after `now`, and at least `min_period`
    /// after the fire that runs.
    pub fn due(&self, spec: &CronSpec, now: DateTime<Utc>, grace: Duration, min_period: Duration) -> Option<Firing> {
        let next_fire_at = self.next_fire_at?;
        if self.paused || next_fire_at > now {
            return None;
        }
        // The latest fire at or before now (at least the stored one).
        let latest = spec.latest_at_or_before(now).map_or(next_fire_at, |l| l.max(next_fire_at));
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let fire_at = match self.catch_up {
            CatchUp::Once => Some(latest),
            CatchUp::Skip => (now - latest <= grace).then_some(latest),
        };
        let floor = chrono::Duration::from_std(min_period).unwrap_or(chrono::Duration::MAX);
        let after = match fire_at {
            // The fire that runs counts for its period: nothing again before it ends.
            Some(fire) => now.max(fire + floor - chrono::Duration::milliseconds(1)),
            None => now,
        };
        Some(Firing { fire_at, next: spec.next_after(after) })
    }
}

/// The job kind that posts a schedule's message (payload `{"schedule": "sch_…",
/// "fire_at": "…"}`, key [`fire_job_key`]).
pub const FIRE_JOB: &str = "schedule.fire";

/// The key of the job of one fire: `schedule:<id>:<fire time in ms since the epoch>`.
pub fn fire_job_key(id: &ScheduleId, fire_at: DateTime<Utc>) -> String {
    format!("schedule:{id}:{}", fire_at.timestamp_millis())
}

/// Checks a schedule's message and template (the expression is checked by
/// [`CronSpec::parse`] and [`CronSpec::check_period`]).
pub fn validate_target(target: &ScheduleTarget, message: &str) -> Result<(), RunInputError> {
    crate::run::validate_message(message)?;
    if let ScheduleTarget::Template(template) = target {
        crate::run::Session {
            id: SessionId::from_random([0; 16]),
            tenant: TenantId::from_random([0; 16]),
            title: template.title.clone(),
            personas: template.personas.clone(),
            strategy: template.strategy,
            limits: template.limits,
            created_by: String::new(),
            created_at: DateTime::UNIX_EPOCH,
        }
        .validate()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc)
    }

    fn schedule(cron: &str, zone: &str, catch_up: CatchUp, next: DateTime<Utc>) -> Schedule {
        Schedule {
            id: ScheduleId::from_random([1; 16]),
            tenant: TenantId::from_random([2; 16]),
            cron: cron.into(),
            time_zone: zone.into(),
            target: ScheduleTarget::Session { session: SessionId::from_random([3; 16]) },
            message: "report".into(),
            catch_up,
            paused: false,
            next_fire_at: Some(next),
            created_by: "key_x".into(),
            role: Role::Member,
            created_at: next,
            updated_at: next,
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);
    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn parses_five_and_six_fields_in_a_time_zone() {
        let spec = CronSpec::parse("0 9 * * 1-5", "Europe/Paris").expect("valid");
        // Friday 2026-01-02 10:00 Paris is past 9:00: next is Monday 9:00 Paris = 8:00 UTC.
        assert_eq!(spec.next_after(at("2026-01-02T09:00:00Z")), Some(at("2026-01-05T08:00:00Z")));
        let seconds = CronSpec::parse("30 */5 * * * *", "UTC").expect("valid");
        assert_eq!(seconds.next_after(at("2026-01-01T00:00:00Z")), Some(at("2026-01-01T00:00:30Z")));
    }

    #[test]
    fn refuses_bad_expressions_and_zones_with_clear_errors() {
        let err = CronSpec::parse("61 * * * *", "UTC").expect_err("minute 61");
        assert!(matches!(&err, ScheduleError::Cron { .. }), "{err}");
        let text = err.to_string();
        assert!(text.starts_with("invalid cron expression `61 * * * *`: "), "{text}");
        assert!(!text.ends_with('.'), "{text}");
        assert!(matches!(CronSpec::parse("* * *", "UTC"), Err(ScheduleError::Cron { .. })));
        assert!(matches!(CronSpec::parse("", "UTC"), Err(ScheduleError::Cron { .. })));
        assert_eq!(
            CronSpec::parse("* * * * *", "Mars/Olympus").expect_err("zone"),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
        let never = CronSpec::parse("0 0 30 2 *", "UTC").expect("parses");
        assert!(matches!(never.check_period(at("2026-01-01T00:00:00Z"), MINUTE), Err(ScheduleError::Never(_))));
    }

    #[test]
    fn refuses_schedules_firing_more_often_than_the_floor() {
        let from = at("2026-01-01T00:00:00Z");
        let every_second = CronSpec::parse("* * * * * *", "UTC").expect("valid");
        let err = every_second.check_period(from, MINUTE).expect_err("too often");
        assert!(matches!(err, ScheduleError::TooFrequent { gap_secs: 1, min_secs: 60, .. }), "{err}");
        CronSpec::parse("* * * * *", "UTC").expect("valid").check_period(from, MINUTE).expect("once a minute is fine");
        let twice = CronSpec::parse("0,30 0 * * * *", "UTC").expect("valid");
        assert!(twice.check_period(from, MINUTE).is_err(), "two fires 30 s apart once an hour");
        every_second.check_period(from, Duration::from_secs(1)).expect("a lower floor allows it");
    }

    #[test]
    fn an_on_time_fire_runs_and_the_next_is_in_the_future() {
        let spec = CronSpec::parse("*/5 * * * *", "UTC").expect("valid");
        let s = schedule("*/5 * * * *", "UTC", CatchUp::Skip, at("2026-01-01T00:05:00Z"));
        assert_eq!(s.due(&spec, at("2026-01-01T00:04:59Z"), GRACE, MINUTE), None, "not yet due");
        let firing = s.due(&spec, at("2026-01-01T00:05:10Z"), GRACE, MINUTE).expect("due");
        assert_eq!(
            firing,
            Firing { fire_at: Some(at("2026-01-01T00:05:00Z")), next: Some(at("2026-01-01T00:10:00Z")) }
        );
        let paused = Schedule { paused: true, ..s };
        assert_eq!(paused.due(&spec, at("2026-01-01T00:05:10Z"), GRACE, MINUTE), None);
    }

    #[test]
    fn after_downtime_once_runs_the_latest_missed_fire_and_skip_runs_none() {
        let spec = CronSpec::parse("0 * * * *", "UTC").expect("valid");
        let now = at("2026-01-01T05:30:00Z");
        let once = schedule("0 * * * *", "UTC", CatchUp::Once, at("2026-01-01T01:00:00Z"));
        assert_eq!(
            once.due(&spec, now, GRACE, MINUTE),
            Some(Firing { fire_at: Some(at("2026-01-01T05:00:00Z")), next: Some(at("2026-01-01T06:00:00Z")) })
        );
        let skip = Schedule { catch_up: CatchUp::Skip, ..once };
        assert_eq!(
            skip.due(&spec, now, GRACE, MINUTE),
            Some(Firing { fire_at: None, next: Some(at("2026-01-01T06:00:00Z")) })
        );
    }

    #[test]
    fn a_fixed_time_in_a_spring_forward_gap_fires_once_after_the_gap() {
        // Europe/Paris skips 02:00–03:00 on 2026-03-29 (01:00 UTC).
        let spec = CronSpec::parse("30 2 * * *", "Europe/Paris").expect("valid");
        let fires = spec.upcoming(at("2026-03-28T12:00:00Z"), 3);
        assert_eq!(fires[0], at("2026-03-29T01:00:00Z"), "right after the gap (03:00 CEST)");
        assert_eq!(fires[1], at("2026-03-30T00:30:00Z"), "02:30 CEST the next day");
        // And a fall-back hour (2026-10-25, 03:00 CEST → 02:00 CET) fires once.
        let fall = spec.upcoming(at("2026-10-24T12:00:00Z"), 2);
        assert_eq!(fall, vec![at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")]);
    }

    #[test]
    fn fire_keys_name_the_schedule_and_the_fire_time() {
        let id = ScheduleId::from_random([1; 16]);
        let key = fire_job_key(&id, at("2026-01-01T00:00:00Z"));
        assert_eq!(key, format!("schedule:{id}:1767225600000"));
        assert!(key.len() <= 200);
    }

    #[test]
    fn catch_up_policies_round_trip_their_names() {
        for c in [CatchUp::Once, CatchUp::Skip] {
            assert_eq!(CatchUp::parse(c.as_str()), Some(c));
        }
        assert_eq!(CatchUp::parse("all"), None);
    }
}
