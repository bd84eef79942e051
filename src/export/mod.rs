//! What leaves the process: the restart metric families ([`metrics`]), the cardinality
//! guard they share with the prober's, the OpenMetrics exposition, and the admin HTTP
//! server (`/metrics`, `/healthz`, `/readyz`, `/api/v1/incidents`) with its TLS and
//! authentication ([`web`]).

pub mod admin;
pub mod cardinality;
pub mod config;
pub mod exposition;
pub mod metrics;
pub mod web;
