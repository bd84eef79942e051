//! The process: the command line ([`cli`]), the wiring of the pipelines into one daemon
//! ([`daemon`]), the restart pipeline's loop ([`watch_loop`]), the supervision of the
//! long-running tasks ([`supervise`]) and signal handling ([`shutdown`]).

mod cli;
mod daemon;
mod shutdown;
mod supervise;
mod watch_loop;

pub use cli::main;
