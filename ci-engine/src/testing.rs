//! Test support (feature `test-util`): mocks of the three traits and a scripted
//! source. The simulated runner lives in `sim`.

pub use crate::runner::MockStepRunner;
pub use crate::source::MockCommitSource;
pub use crate::store::MockRunStore;
