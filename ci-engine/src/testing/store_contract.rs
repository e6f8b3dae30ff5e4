//! The behaviour every `RunStore` must show (under construction).
