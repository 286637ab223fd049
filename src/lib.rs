//! keygate: an LLM API gateway. One binary, two planes: the data plane (`proxy`) forwards client
//! calls to upstream keys it picks through the coordination store (`coord`); the control plane
//! (`admin`) manages services, keys, access keys and users in the relational store (`db`).
pub mod admin;
pub mod app;
pub mod billing;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod coord;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod egress;
pub mod events;
pub mod formats;
pub mod jobs;
pub mod money;
pub mod ops;
pub mod proxy;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;

pub use app::App;
pub use config::Config;
