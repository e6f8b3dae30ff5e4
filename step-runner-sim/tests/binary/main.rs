//! Black-box tests of the `step-runner-sim` binary: each test starts the real
//! program on 127.0.0.1 port 0, reads the bound address from its startup line,
//! and checks one rule of the protocol (`docs/step-runner-sim.md`,
//! "Behaviour") over real TCP.
//! One test binary with several modules, so that the helpers are shared and
//! the (slow) link happens once.

mod common;
mod concurrency;
mod crash;
mod process;
mod request_log;
mod wire;
