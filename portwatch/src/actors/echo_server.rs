//! `echo-server`: a well-behaved server. It answers each request line with the same line
//! and closes its side as soon as it reads EOF, so none of its sockets linger in
//! CLOSE_WAIT, and the peer, which closed first, is the one left with TIME_WAIT.
use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::TcpStream,
};

use super::shared::{self, Acceptor, ActorError};
use crate::cli::EchoServerArgs;

pub fn run(args: &EchoServerArgs) -> Result<(), ActorError> {
    let mut acceptor = Acceptor::listen(args.listen)?;
    shared::say_ready(acceptor.local_addr().port())?;
    loop {
        let stream = acceptor.accept()?;
        shared::spawn("echo", move || {
            // A peer that resets or misbehaves ends its own connection, not the server.
            let _ = echo(&stream);
        })?;
    }
}

/// Echoes lines until EOF; the caller drops (closes) the stream right after.
fn echo(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let mut writer = stream;
        writer.write_all(&line)?;
    }
}
