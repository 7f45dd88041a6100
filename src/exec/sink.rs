//! What collects the rows of one statement: all of them, metered ([`Collector`]), or the
//! first ([`FirstRow`]).

use std::marker::PhantomData;
use std::ops::ControlFlow;

use crate::budget::{BudgetSpec, Exceeded, Meter, Meterage};
use crate::query::RowSink;

/// Collects the rows of one execution, metering them against the budget.
pub(super) struct Collector<U, M> {
    pub(super) rows: Vec<U>,
    /// Rows the client library holds for this result (buffered results only).
    pub(super) buffered: u64,
    /// When the client itself stops the statement (SQLite under a time limit).
    pub(super) deadline: Option<std::time::Instant>,
    pub(super) meter: Meterage,
    pub(super) exceeded: Option<Exceeded>,
    pub(super) spec: BudgetSpec,
    /// `first`/`get_result`: no row is an error that shows the SQL.
    pub(super) sql_if_empty: bool,
    pub(super) _meter: PhantomData<fn() -> M>,
}

impl<U, M: Meter<U>> RowSink<U> for Collector<U, M> {
    fn expect(&mut self, rows: usize) {
        // A buffered result (PostgreSQL's default mode, MySQL) knows its size, bounded by the
        // LIMIT: reserve it once, as Diesel's `load` does through `collect`.
        self.rows.reserve_exact(rows);
        self.buffered = rows as u64;
    }

    fn push(&mut self, row: U) -> ControlFlow<()> {
        if self
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            self.exceeded = Some(Exceeded::Time);
            return ControlFlow::Break(());
        }
        match self.meter.add(M::size_of(&row), &self.spec) {
            None => {
                self.rows.push(row);
                ControlFlow::Continue(())
            }
            Some(e) => {
                self.exceeded = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    fn needs_sql(&self) -> bool {
        self.exceeded.is_some() || (self.sql_if_empty && self.rows.is_empty())
    }
}

/// Keeps the one row `first` fetches, without a vector.
pub(super) struct FirstRow<U, M> {
    pub(super) row: Option<U>,
    /// Rows the client library holds for this result (buffered results only).
    pub(super) buffered: u64,
    pub(super) meter: Meterage,
    pub(super) exceeded: Option<Exceeded>,
    pub(super) spec: BudgetSpec,
    pub(super) _meter: PhantomData<fn() -> M>,
}

impl<U, M: Meter<U>> RowSink<U> for FirstRow<U, M> {
    fn expect(&mut self, rows: usize) {
        self.buffered = rows as u64;
    }

    fn push(&mut self, row: U) -> ControlFlow<()> {
        match self.meter.add(M::size_of(&row), &self.spec) {
            None => self.row = Some(row),
            Some(e) => self.exceeded = Some(e),
        }
        ControlFlow::Break(())
    }

    fn needs_sql(&self) -> bool {
        self.exceeded.is_some() || self.row.is_none()
    }
}
