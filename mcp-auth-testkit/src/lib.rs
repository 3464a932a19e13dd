#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod auth_server;
mod dpop;
mod gate;
mod idp;
mod mcp_server;
mod util;

pub use auth_server::{
    AsRequest, AuthServer, AuthServerConfig, DevicePolls, Endpoint, Misbehavior, RegisteredClient,
    TokenFault, TokenInfo,
};
pub use dpop::{DpopRejection, TestDpopKey};
pub use gate::{Gate, GateRequest};
pub use idp::{IdentityProvider, IdpConfig, IdpMisbehavior, IdpRequest, JwtParts, TestJwtKey};
pub use mcp_server::{McpMisbehavior, McpRequest, McpServer, McpServerConfig, PrmLocation};
