//! SQL over recent windows: Arrow tables (`tables`), the window store (`window`), the DataFusion
//! engine (`engine`) and the HTTP front end (`http`).

pub mod engine;
pub mod http;
pub mod tables;
pub mod window;
