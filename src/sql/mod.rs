//! SQL as Diesel AST nodes, shared by the capabilities (keyset predicates for walks and pages),
//! and the few places where rendered SQL is read.

pub(crate) mod inspect;
pub(crate) mod keyset;
