//! Statements prepared once per connection and reused.
//!
//! Diesel caches a prepared statement only when it can key it by the
//! query's type alone, so it never caches an UPDATE, an upsert or an insert
//! with optional columns: their SQL text may change from call to call under
//! the same type. Those are exactly the statements of a chat turn, and an
//! uncached statement costs a parse and plan in PostgreSQL (and a second
//! round trip to prepare it) or in SQLite every time. [`Cached`] keys the
//! cache by the SQL text instead, which is correct for any statement: a
//! different text is a different entry. Use it only where the number of
//! distinct texts is small (no `IN` lists of varying length), or the cache
//! grows with them.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

#[derive(Debug, Clone, Copy)]
pub struct Cached<Q>(pub Q);

impl<Q, DB> QueryFragment<DB> for Cached<Q>
where
    Q: QueryFragment<DB>,
    DB: Backend,
{
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &DB) -> QueryResult<bool> {
        Ok(true)
    }
}

/// No static id: the cache key is the SQL text and the bind types.
impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}

/// Runs on a plain connection too (the async methods need nothing: their
/// trait covers every query).
impl<Q, Conn> diesel::RunQueryDsl<Conn> for Cached<Q> {}
