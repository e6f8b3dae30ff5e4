//! step-runner-sim (under construction).
