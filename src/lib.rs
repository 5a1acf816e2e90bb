//! pinhole: a DNS-layer filtering resolver. It forwards queries for approved names, answers
//! every other name with a block answer, and (with the firewall module) opens the addresses it
//! hands out in nftables before the answer leaves.
//!
//! One module per concern; each says what it owns and what it must not touch.

pub mod cache;
pub mod config;
pub mod control;
pub mod diag;
pub mod dns;
pub mod explain;
pub mod firewall;
pub mod metrics;
pub mod policy;
pub mod upstream;
