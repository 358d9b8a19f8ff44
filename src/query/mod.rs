//! SQL over recent windows: Arrow tables (`tables`), the window store (`window`), the DataFusion
//! engine (`engine`) with its query limits (`limits`), and the HTTP (`http`) and PostgreSQL wire protocol (`pg`) front ends.

pub mod engine;
pub mod http;
pub mod limits;
pub mod pg;
pub mod tables;
pub mod window;
