//! call-probe: see the project's issues; this crate is not implemented yet.
pub mod session;
