//! N+1 by scaling: the same code path at several data scales, its round trips compared.
//!
//! A code path that sends one query per parent row sends more queries when there are more
//! parents; one that batches does not. Running it at two or more scales and comparing the round
//! trips finds N+1 without thresholds (a constant but high count is not an N+1), the way
//! `n_plus_one_control` does.

use std::fmt;
use std::panic::Location;

use super::{record, Ledger};
use crate::exec::Executor;
use crate::instrument::AllowUnbudgeted;

/// Runs `setup(conn, n)` then, recorded, `run(conn, n)` for each scale `n` in `scales`; the
/// ledgers come back in a [`Scaling`] to check. `setup` is not recorded and may run
/// unbudgeted statements under strict mode (it is a fixture); it must leave the data at scale
/// `n` (for example: delete the previous scale's rows, insert `n` parents).
///
/// # Example
/// ```
/// # include!("../../tests/doc_setup.rs");
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (db, mut conn) = demo_db(50)?;
/// use diesel::prelude::*;
/// use diesel_budget::prelude::*;
/// use diesel_budget::demo::{items, Item};
/// use diesel_budget::testing;
///
/// // One query per item: an N+1.
/// let per_item = testing::scaling(&mut conn, &[1, 10, 50], |_, _| {}, |conn, n| {
///     for id in 1..=n as i32 {
///         items::table.find(id).budget(Budget::rows(1)).first::<Item>(conn).unwrap();
///     }
/// });
/// let err = per_item.check_constant().unwrap_err();
/// // The first scale past the limit: 10 round trips at scale 10.
/// assert_eq!((err.from_round_trips, err.to_round_trips, err.to_scale), (1, 10, 10));
/// assert!(err.to_string().contains("grew"));
///
/// // The batched rewrite: one query whatever n.
/// let batched = testing::scaling(&mut conn, &[1, 10, 50], |_, _| {}, |conn, n| {
///     let ids: Vec<i32> = (1..=n as i32).collect();
///     items::table
///         .filter(items::id.eq_any(ids))
///         .budget(Budget::rows(100))
///         .load::<Item>(conn)
///         .unwrap();
/// });
/// batched.assert_constant();
/// # Ok(()) }
/// ```
#[track_caller]
pub fn scaling<X, S, R>(conn: &mut X, scales: &[u64], mut setup: S, mut run: R) -> Scaling
where
    X: Executor,
    S: FnMut(&mut X, u64),
    R: FnMut(&mut X, u64),
{
    let mut runs = Vec::with_capacity(scales.len());
    for &n in scales {
        {
            let _fixture = AllowUnbudgeted::enter("testing::scaling setup");
            setup(conn, n);
        }
        let ((), ledger) = record(conn, |conn| run(conn, n));
        runs.push((n, ledger));
    }
    Scaling {
        runs,
        site: Location::caller(),
    }
}

/// The ledgers of one code path at several scales ([`scaling`]).
#[derive(Debug, Clone)]
pub struct Scaling {
    runs: Vec<(u64, Ledger)>,
    site: &'static Location<'static>,
}

/// How one query shape's count changed between two scales.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Growth {
    /// The SQL shape ([`super::fingerprint`]).
    pub fingerprint: String,
    /// Where it was issued, when known.
    pub location: Option<&'static Location<'static>>,
    /// Statements of this shape at the smaller scale.
    pub from: usize,
    /// Statements of this shape at the larger scale.
    pub to: usize,
}

/// Round trips grew with the scale faster than allowed: an N+1. The message names each query
/// shape that grew and its call site.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScalingError {
    /// The smaller scale.
    pub from_scale: u64,
    /// The larger scale, where the limit was passed.
    pub to_scale: u64,
    /// Round trips at the smaller scale.
    pub from_round_trips: usize,
    /// Round trips at the larger scale.
    pub to_round_trips: usize,
    /// Round trips allowed at the larger scale.
    pub allowed: f64,
    /// Allowed growth per unit of scale (0: constant).
    pub slope: f64,
    /// The shapes whose count grew, most growth first.
    pub grown: Vec<Growth>,
    /// Where [`scaling`] was called.
    pub site: &'static Location<'static>,
}

impl fmt::Display for ScalingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed = if self.slope == 0.0 {
            "constant".to_owned()
        } else {
            format!("at most {} more per unit of scale", self.slope)
        };
        writeln!(
            f,
            "N+1: round trips grew from {} at scale {} to {} at scale {} (allowed: {allowed}, \
             {:.0} at scale {}); scaling run at {}",
            self.from_round_trips,
            self.from_scale,
            self.to_round_trips,
            self.to_scale,
            self.allowed.floor(),
            self.to_scale,
            self.site
        )?;
        for g in &self.grown {
            let at = g
                .location
                .map(|l| l.to_string())
                .unwrap_or_else(|| "unknown call site".to_owned());
            writeln!(
                f,
                "  grew: {} at {at}: {} at scale {}, {} at scale {}",
                g.fingerprint, g.from, self.from_scale, g.to, self.to_scale
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ScalingError {}

impl Scaling {
    /// Each scale with its ledger, in the order run.
    pub fn runs(&self) -> &[(u64, Ledger)] {
        &self.runs
    }

    /// Round trips must not grow with the scale.
    pub fn check_constant(&self) -> Result<(), ScalingError> {
        self.check_slope(0.0)
    }

    /// Round trips may grow by at most `per_unit` per unit of scale over those at the
    /// smallest scale (`0.01`: one more query per 100 parents, as a batched walk of 100 rows a
    /// batch does).
    pub fn check_slope(&self, per_unit: f64) -> Result<(), ScalingError> {
        let Some((n0, base)) = self.runs.iter().min_by_key(|(n, _)| *n) else {
            return Ok(());
        };
        let rt0 = base.round_trips();
        for (n, ledger) in &self.runs {
            let rt = ledger.round_trips();
            let allowed = rt0 as f64 + per_unit * n.saturating_sub(*n0) as f64;
            if rt as f64 > allowed + 1e-9 {
                return Err(ScalingError {
                    from_scale: *n0,
                    to_scale: *n,
                    from_round_trips: rt0,
                    to_round_trips: rt,
                    allowed,
                    slope: per_unit,
                    grown: grown(base, ledger),
                    site: self.site,
                });
            }
        }
        Ok(())
    }

    /// [`check_constant`](Self::check_constant), panicking with its message.
    #[track_caller]
    pub fn assert_constant(&self) {
        if let Err(e) = self.check_constant() {
            panic!("{e}");
        }
    }

    /// [`check_slope`](Self::check_slope), panicking with its message.
    #[track_caller]
    pub fn assert_slope(&self, per_unit: f64) {
        if let Err(e) = self.check_slope(per_unit) {
            panic!("{e}");
        }
    }
}

/// The shapes of `to` that ran more often than in `from`, most growth first.
fn grown(from: &Ledger, to: &Ledger) -> Vec<Growth> {
    let before = from.shapes();
    let mut out: Vec<Growth> = to
        .shapes()
        .into_iter()
        .filter_map(|s| {
            let was = before
                .iter()
                .find(|b| b.fingerprint == s.fingerprint && b.location == s.location)
                .map_or(0, |b| b.count);
            (s.count > was).then_some(Growth {
                fingerprint: s.fingerprint,
                location: s.location,
                from: was,
                to: s.count,
            })
        })
        .collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.to - g.from));
    out
}
