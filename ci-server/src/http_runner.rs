//! A `StepRunner` over HTTP (under construction).
