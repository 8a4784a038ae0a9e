//! One module per role.
pub mod churn_client;
pub mod connect_and_exit;
pub mod echo_server;
pub mod hold_client;
pub mod hold_server;
pub mod keepalive_client;
pub mod leak_client;
pub mod leak_server;
pub mod prefork_server;
