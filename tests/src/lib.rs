//! Shared harness for the end-to-end tests: child processes that are always
//! cleaned up, and the registry hosts (native and under workerd) started
//! with a chosen configuration.

pub mod netem;
pub mod netns;
pub mod process;
pub mod registry_host;
