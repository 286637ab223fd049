//! Background jobs of the control plane. Each replica runs them; work that one replica at a time
//! should do takes a lock in the coordination store (`Coord::try_lock`) first.
//!
//! - `validate`: tests upstream keys with a cheap request (on demand from the admin API, and on a
//!   schedule per service) and brings back keys out of rotation that answer again.
//! - `persist`: flushes live balances, spend and per-key statistics to the database.
pub mod persist;
pub mod validate;
