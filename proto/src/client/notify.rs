//! When an observation notifies (Core TS 1.1 §5.1.2 "Attributes", §6.4.2 "Notify"): the
//! rules a simulated client applies to the notification attributes of one observation.
//!
//! The effective attributes of an observed path are its own, then inherited from the
//! levels above (resource instance → resource → instance → object), then the Server
//! object's Default Minimum / Maximum Period (resources 1/x/2, 1/x/3) for `pmin` / `pmax`.
//! With those, for one observation (times on the caller's clock):
//!
//! 1. **pmin**: no notification earlier than `pmin` after the last one (the Observe response
//!    counts as the first); unset means 0.
//! 2. **pmax**: a notification at the latest `pmax` after the last one, changed or not;
//!    ignored when below `pmin` ([`Attributes::effective_pmax`]) or 0 (no maximum).
//! 3. **Change condition**, between the value last notified `a` and the value last sampled
//!    `b` (both numbers, for an observed numeric single resource or resource instance):
//!    with none of `gt`, `lt`, `st` set, any change of a value below the observed path since
//!    the last notification counts (also for objects, instances, non-numeric resources and
//!    composite observations, where the thresholds do not apply). With any of them set the
//!    condition holds when `b != a` and `b` lies on the other side of `gt` than `a`
//!    (`a > gt` differs from `b > gt`), or on the other side of `lt` (`a < lt` differs from
//!    `b < lt`), or `|b - a| >= st` — whichever are set, or-ed.
//! 4. A notification is sent at the first instant at or after `last + pmin` at which the
//!    condition holds: on the change itself when `pmin` has passed, else exactly at
//!    `last + pmin` if the condition still holds then.
//! 5. **epmin / epmax** (1.1): values are sampled on change, but not more often than every
//!    `epmin` (a change within `epmin` of the last sample is sampled at `last sample +
//!    epmin`), and at least every `epmax` (ignored when not above `epmin`). Every
//!    notification is also a sample.
//!
//! A notification always carries the current value (it reads the tree when it is sent).

use std::time::{Duration, Instant};

use crate::coap::ObservationId;
use crate::codec::link::Attributes;
use crate::content::ContentFormat;
use crate::ids::Lwm2mPath;

/// The timing and condition parameters of one observation, from its effective attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Policy {
    pmin: Duration,
    pmax: Option<Duration>,
    gt: Option<f64>,
    lt: Option<f64>,
    st: Option<f64>,
    epmin: Option<Duration>,
    epmax: Option<Duration>,
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

impl Policy {
    /// The policy for effective attributes (already inherited and defaulted).
    pub(super) fn new(a: &Attributes) -> Self {
        let epmin = a.epmin.map(secs);
        Self {
            pmin: secs(a.pmin.unwrap_or(0)),
            pmax: a.effective_pmax().filter(|m| *m > 0).map(secs),
            gt: a.gt,
            lt: a.lt,
            st: a.st,
            epmin,
            epmax: a
                .epmax
                .map(secs)
                .filter(|m| epmin.is_none_or(|e| *m > e) && !m.is_zero()),
        }
    }

    fn has_thresholds(&self) -> bool {
        self.gt.is_some() || self.lt.is_some() || self.st.is_some()
    }

    /// Rule 3: whether `b` is worth notifying after `a` was notified; `changed` says
    /// whether any sampled change happened since.
    pub(super) fn condition(&self, a: Option<f64>, b: Option<f64>, changed: bool) -> bool {
        match (a, b) {
            (Some(a), Some(b)) if self.has_thresholds() => {
                #[allow(clippy::float_cmp)]
                let same = a == b;
                !same
                    && (self.gt.is_some_and(|gt| (a > gt) != (b > gt))
                        || self.lt.is_some_and(|lt| (a < lt) != (b < lt))
                        || self.st.is_some_and(|st| (b - a).abs() >= st))
            }
            _ => changed,
        }
    }
}

/// What an observation watches.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Target {
    /// Observe on one path (GET + Observe).
    Path(Lwm2mPath),
    /// Observe-Composite on a list of paths (FETCH + Observe, Core TS 1.1 §6.4.1).
    Composite(Vec<Lwm2mPath>),
}

impl Target {
    /// Whether a change at `path` concerns this observation (the path is below or above
    /// an observed path).
    pub(super) fn overlaps(&self, path: &Lwm2mPath) -> bool {
        let hit = |t: &Lwm2mPath| t.is_prefix_of(path) || path.is_prefix_of(t);
        match self {
            Self::Path(p) => hit(p),
            Self::Composite(ps) => ps.iter().any(hit),
        }
    }

    /// The path reported in events (`/` for a composite observation).
    pub(super) fn path(&self) -> Lwm2mPath {
        match self {
            Self::Path(p) => *p,
            Self::Composite(_) => Lwm2mPath::Root,
        }
    }
}

/// One observation the client serves.
#[derive(Debug, Clone)]
pub(super) struct Observation {
    /// The coap layer's id.
    pub(super) id: ObservationId,
    /// What is observed.
    pub(super) target: Target,
    /// The format of the Observe response, used for every notification.
    pub(super) format: ContentFormat,
    /// The policy in force (refreshed when attributes change).
    pub(super) policy: Policy,
    last_notify: Instant,
    last_sample: Instant,
    /// A change not sampled yet (epmin).
    unsampled: bool,
    /// A sampled change not notified yet.
    changed: bool,
    /// The numeric value last notified.
    notified: Option<f64>,
    /// The numeric value last sampled.
    sampled: Option<f64>,
}

impl Observation {
    /// An observation established at `now` with the numeric value `value` (if any).
    pub(super) fn new(
        id: ObservationId,
        target: Target,
        format: ContentFormat,
        policy: Policy,
        now: Instant,
        value: Option<f64>,
    ) -> Self {
        Self {
            id,
            target,
            format,
            policy,
            last_notify: now,
            last_sample: now,
            unsampled: false,
            changed: false,
            notified: value,
            sampled: value,
        }
    }

    /// Something below or above the observed path changed.
    pub(super) fn on_change(&mut self) {
        self.unsampled = true;
    }

    /// When [`Observation::poll`] must run next.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let p = &self.policy;
        let mut at: Option<Instant> = None;
        let mut add = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(pmax) = p.pmax {
            add(self.last_notify + pmax);
        }
        if self.unsampled {
            add(self.last_sample + p.epmin.unwrap_or_default());
        }
        if let Some(epmax) = p.epmax {
            add(self.last_sample + epmax);
        }
        if p.condition(self.notified, self.sampled, self.changed) {
            add(self.last_notify + p.pmin);
        }
        at
    }

    /// Samples if a sample is due (rule 5) and says whether a notification is due at `now`
    /// (rules 1-4). `current` reads the numeric value now.
    pub(super) fn poll(&mut self, now: Instant, current: Option<f64>) -> bool {
        let p = self.policy;
        let sample_change = self.unsampled && p.epmin.is_none_or(|e| now >= self.last_sample + e);
        let sample_period = p.epmax.is_some_and(|e| now >= self.last_sample + e);
        if sample_change || sample_period {
            self.sampled = current;
            self.changed |= self.unsampled;
            self.unsampled = false;
            self.last_sample = now;
        }
        let pmax_due = p.pmax.is_some_and(|m| now >= self.last_notify + m);
        let change_due = now >= self.last_notify + p.pmin
            && p.condition(self.notified, self.sampled, self.changed);
        pmax_due || change_due
    }

    /// A notification carrying `value` went out at `now`.
    pub(super) fn notified(&mut self, now: Instant, value: Option<f64>) {
        self.last_notify = now;
        self.last_sample = now;
        self.unsampled = false;
        self.changed = false;
        self.notified = value;
        self.sampled = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(q: &[&str]) -> Policy {
        let update = crate::codec::link::AttributeUpdate::from_query(q).unwrap();
        Policy::new(&update.set)
    }

    #[test]
    fn condition_rules() {
        let p = policy(&["gt=50", "lt=10"]);
        assert!(p.condition(Some(40.0), Some(60.0), true));
        assert!(!p.condition(Some(40.0), Some(45.0), true));
        assert!(p.condition(Some(12.0), Some(5.0), true));
        let st = policy(&["st=2"]);
        assert!(st.condition(Some(1.0), Some(3.0), true));
        assert!(!st.condition(Some(1.0), Some(2.5), true));
        // st=0 never fires without a change
        assert!(!policy(&["st=0"]).condition(Some(1.0), Some(1.0), true));
        // no thresholds: any sampled change
        let none = policy(&[]);
        assert!(none.condition(Some(1.0), Some(1.0), true));
        assert!(!none.condition(Some(1.0), Some(2.0), false));
        // pmax below pmin is ignored (Core TS 1.1 §5.1.2)
        assert_eq!(policy(&["pmin=10", "pmax=5"]).pmax, None);
    }

    #[test]
    fn epmin_defers_sampling() {
        let t0 = Instant::now();
        let p = policy(&["epmin=5"]);
        let mut o = Observation::new(
            ObservationId(1),
            Target::Path(Lwm2mPath::resource(3303, 0, 5700)),
            ContentFormat::Text,
            p,
            t0,
            Some(1.0),
        );
        o.on_change();
        assert_eq!(o.deadline(), Some(t0 + Duration::from_secs(5)));
        assert!(!o.poll(t0 + Duration::from_secs(1), Some(2.0)));
        assert!(o.poll(t0 + Duration::from_secs(5), Some(2.0)));
    }
}
