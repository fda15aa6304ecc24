//! Placeholder until the order issue lands its planner benchmark.
fn main() {}
