//! The process: the command line ([`cli`]), the wiring of the pipelines into one daemon
//! ([`daemon`]), the restart pipeline's loop ([`watch_loop`]) and signal handling
//! ([`shutdown`]).

pub mod cli;
pub mod daemon;
pub mod shutdown;
pub mod watch_loop;

pub use cli::main;
