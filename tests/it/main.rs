//! keygate integration tests: the real `App` on loopback ports against a real SQLite file + memory
//! store and a real Postgres + Redis (started by `servers`), with only the upstream LLM mocked.
mod harness;
mod mock;
mod servers;

mod admin;
mod billing_sync;
mod binary;
mod capture;
mod cluster;
mod console;
mod contract;
mod edge;
mod egress;
mod formats;
mod key_list;
mod logs;
mod migrations;
mod money;
mod ops;
mod outage;
mod partitions;
mod pipeline;
mod polyglot;
mod pool;
mod pricing;
mod proxy;
mod router;
mod routing;
mod sinks;
mod ssrf;
mod stats;
mod traces;
mod validation;
