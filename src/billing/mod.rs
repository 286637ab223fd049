//! Money off the hot path's critical section: prices (`pricing`) turn a request's tokens into a
//! cost in integer micro-units (`crate::money`); the coordination store debits it from the key's
//! live balance and the access key's budget; `sync` reads balances from upstream billing APIs.
pub mod defaults;
pub mod estimate;
pub mod pricing;
pub mod sync;
