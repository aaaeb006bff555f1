//! How the parts are connected to each other inside one process, apart from the serving core
//! that composes them (`server.rs`).

pub mod alerts;
pub mod dns01;
pub mod follow;
pub mod listeners;
