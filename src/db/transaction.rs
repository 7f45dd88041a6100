//! Transactions on a [`Conn`]: rolled back when their closure fails or panics.

use diesel::connection::{Connection, TransactionManager};

use super::Conn;
use crate::backend::BudgetConnection;
use crate::error::{Error, Result};

impl<C: BudgetConnection> Conn<C> {
    /// Runs `f` in a transaction (a savepoint when nested): committed when `f` returns `Ok`,
    /// rolled back when it returns `Err`, and rolled back when `f` panics.
    ///
    /// The last point is where it differs from Diesel's `Connection::transaction` (and from
    /// `conn.unbudgeted().transaction(..)`): there, a panic caught while the connection is
    /// still held leaves the transaction open, the next `transaction` silently becomes a
    /// savepoint inside it, and its "committed" write is lost when the connection is returned.
    /// Here the transaction (or savepoint) of a panicking closure is rolled back while the
    /// panic unwinds, so a later `transaction` commits for real. Should that rollback fail, the
    /// connection's transaction manager is broken: later transactions on it fail with an
    /// error, and the pool closes it instead of handing it out again.
    ///
    /// # Errors
    /// `f`'s error; or [`Error::Query`] whose [`sql`](Error::sql) is `BEGIN`, `COMMIT` or
    /// `ROLLBACK` (a savepoint's when nested) when that step fails.
    pub fn transaction<T, E, F>(&mut self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce(&mut Self) -> std::result::Result<T, E>,
        E: From<Error>,
    {
        type Tm<C> = <C as Connection>::TransactionManager;
        Tm::<C>::begin_transaction(&mut *self.inner).map_err(|e| Error::query("BEGIN", e))?;
        let mut guard = RollbackOnUnwind {
            conn: self,
            armed: true,
        };
        let result = f(&mut *guard.conn);
        guard.armed = false;
        let conn = &mut *guard.conn.inner;
        match result {
            Ok(value) => {
                Tm::<C>::commit_transaction(conn).map_err(|e| Error::query("COMMIT", e))?;
                Ok(value)
            }
            Err(user_error) => match Tm::<C>::rollback_transaction(conn) {
                Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(user_error),
                Err(rollback_error) => Err(Error::query("ROLLBACK", rollback_error).into()),
            },
        }
    }

    /// Starts a transaction that is never committed (Diesel's `begin_test_transaction`): for
    /// tests that must leave nothing behind. It is rolled back when the `Conn` is dropped, so
    /// the pool never hands out a connection with a test transaction open.
    pub fn begin_test_transaction(&mut self) -> Result<()> {
        self.inner
            .begin_test_transaction()
            .map_err(|e| Error::query("BEGIN", e))
    }
}

/// Rolls back the transaction (or savepoint) [`Conn::transaction`] opened when its closure
/// unwinds instead of returning.
struct RollbackOnUnwind<'a, C: BudgetConnection> {
    conn: &'a mut Conn<C>,
    /// Still set when dropped: the closure panicked.
    armed: bool,
}

impl<C: BudgetConnection> Drop for RollbackOnUnwind<'_, C> {
    fn drop(&mut self) {
        if self.armed {
            // A failure leaves the transaction manager broken: later transactions fail and
            // r2d2 closes the connection when it is returned.
            let _ =
                <C as Connection>::TransactionManager::rollback_transaction(&mut *self.conn.inner);
        }
    }
}
