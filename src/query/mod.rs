//! SQL over recent windows: Arrow tables (`tables`), the window store (`window`), the DataFusion
//! engine (`engine`) with its statement gate (`gate`), query limits (`limits`) and capped
//! functions (`capped`), and the HTTP (`http`) and PostgreSQL wire protocol (`pg`) front ends,
//! whose connections `conn` bounds; `nested_text` renders nested columns as JSON for the
//! formats that cannot carry them.

pub mod archive_table;
pub mod capped;
pub mod conn;
pub mod engine;
pub mod gate;
pub mod http;
pub mod limits;
pub mod nested_text;
pub mod pg;
pub mod window;
