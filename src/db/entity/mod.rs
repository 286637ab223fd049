//! SeaORM entities, one per table. Models that hold a secret (even encrypted or hashed) implement
//! `Debug` by hand so that the stored form never reaches a log line.
pub mod access_key;
pub mod audit;
pub mod pricing_rule;
pub mod request_log;
pub mod service;
pub mod tenant;
pub mod upstream_key;
pub mod user;
