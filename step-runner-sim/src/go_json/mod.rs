//! JSON the way the original's Go `encoding/json` reads and writes it.
//!
//! Clients of the original see Go's exact error messages in 400 bodies and Go's
//! string escaping in 200 bodies; serde_json differs in both, so the simulator
//! carries this small, Go-faithful implementation instead.

mod decode;
mod encode;
mod scanner;

pub use decode::decode_payload;
pub use encode::write_go_string;
pub use scanner::{Scan, Scanner};
