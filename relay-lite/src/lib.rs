//! relay-lite: see the project's issues; this crate is not implemented yet.
