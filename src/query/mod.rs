//! SQL over recent windows: Arrow tables (`tables`), the window store (`window`), the DataFusion
//! engine (`engine`), and the HTTP (`http`) and PostgreSQL wire protocol (`pg`) front ends.

pub mod engine;
pub mod http;
pub mod pg;
pub mod tables;
pub mod window;
