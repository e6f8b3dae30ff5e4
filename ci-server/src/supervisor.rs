//! Starts and restarts the bundled simulator (under construction).
