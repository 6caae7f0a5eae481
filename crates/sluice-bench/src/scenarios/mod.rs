//! One module per scenario; each returns a [`crate::report::Report`].

pub mod connections;
pub mod cost;
pub mod emulators;
pub mod fairness;
pub mod growth;
pub mod interactive;
pub mod scaling;
pub mod soak;
pub mod spike;
