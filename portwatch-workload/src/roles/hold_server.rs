//! `hold-server`: the server side of a host with many live connections. It accepts on
//! every `--listen` address and holds each connection, reading nothing, until the peer
//! closes it; then it closes its side at once (no CLOSE_WAIT is left behind).
//!
//! Unlike the other roles it is asynchronous: a thread per connection does not scale
//! to the 100,000 connections a memory benchmark holds, one epoll set does.
use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
};

use crate::{
    args::HoldServerArgs,
    shared::{self, RoleError},
};

pub fn run(args: &HoldServerArgs) -> Result<(), RoleError> {
    shared::raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(RoleError::Runtime)?;
    runtime.block_on(serve(&args.listen))
}

async fn serve(addresses: &[SocketAddr]) -> Result<(), RoleError> {
    let mut listeners = Vec::with_capacity(addresses.len());
    let mut port = 0;
    for &addr in addresses {
        let addr = match addr.port() {
            0 => SocketAddr::new(addr.ip(), port),
            _ => addr,
        };
        let error = |source| RoleError::Listen { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(error)?;
        if port == 0 {
            port = listener.local_addr().map_err(error)?.port();
        }
        listeners.push((listener, addr));
    }
    shared::say_ready(port)?;
    let mut accepting = tokio::task::JoinSet::new();
    for (listener, addr) in listeners {
        accepting.spawn(accept_all(listener, addr));
    }
    // The accept loops run until one fails.
    match accepting.join_next().await {
        Some(Ok(err)) => Err(err),
        Some(Err(join)) => Err(RoleError::Runtime(io::Error::other(join))),
        None => Ok(()),
    }
}

async fn accept_all(listener: TcpListener, addr: SocketAddr) -> RoleError {
    let mut warned = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(hold(stream));
            }
            Err(err) if shared::is_resource_shortage(&err) => {
                if !warned {
                    warned = true;
                    shared::warn(&format!(
                        "listener on {addr}: cannot accept: {err}; retrying every 100ms"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(source) => return RoleError::Accept { addr, source },
        }
    }
}

/// Holds one connection until the peer closes (or resets) it, then closes it.
async fn hold(mut stream: TcpStream) {
    let mut buffer = [0u8; 64];
    while let Ok(1..) = stream.read(&mut buffer).await {}
}
