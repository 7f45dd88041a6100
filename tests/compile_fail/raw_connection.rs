// The executor's access to the Diesel connection is sealed: a generic function over
// `Executor` cannot reach the connection (and run an unbudgeted load) without `unbudgeted()`.
use diesel_budget::exec::ConnectionOf;
use diesel_budget::Executor;

fn raw<X: Executor>(x: &mut X) -> &mut ConnectionOf<X> {
    x.connection()
}

fn main() {}
