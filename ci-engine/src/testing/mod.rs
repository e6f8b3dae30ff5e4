//! Test support (feature `test-util`): mockall mocks of the three traits, a
//! deterministic simulated runner and a scripted source (`sim`), and the
//! contract every `RunStore` must meet (`store_contract`).

pub mod sim;
pub mod store_contract;

pub use crate::runner::MockStepRunner;
pub use crate::source::MockCommitSource;
pub use crate::store::MockRunStore;
