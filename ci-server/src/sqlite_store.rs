//! A `RunStore` on SQLite (under construction).
