//! Integration tests: the real proxy, started on ephemeral loopback ports in
//! front of real upstream HTTP servers, driven over real sockets.
//!
//! - `proxying`: what a well-behaved client and upstream see: methods,
//!   streaming bodies, keep-alive, h2c, WebSocket, headers, balancing.
//! - `failures`: upstreams that are down, slow or malformed.
//! - `front_door`: malformed and hostile requests, sent as raw bytes.
//! - `lifecycle`: the binary itself: `check`, and SIGTERM's drain.

mod failures;
mod front_door;
mod lifecycle;
mod proxying;
mod support;
