//! `leak-server`: a server with the bug portwatch hunts. It reads each connection until
//! the peer closes and then never closes its side, so the socket sits in CLOSE_WAIT for
//! as long as the process lives.
use std::{
    io::{self, Read as _},
    net::TcpStream,
    sync::mpsc,
};

use super::shared::{self, Acceptor, ActorError};
use crate::cli::LeakServerArgs;

pub fn run(args: &LeakServerArgs) -> Result<(), ActorError> {
    let mut acceptor = Acceptor::listen(args.listen)?;
    shared::say_ready(acceptor.local_addr().port())?;

    // Each connection is read on its own thread, so one peer that stays open does not
    // hold up the others; at EOF the socket comes back here, to be kept and never closed.
    let (leaked_tx, leaked_rx) = mpsc::channel::<TcpStream>();
    let mut leaked = Vec::new();
    let mut accepted = 0;
    while args.leak.is_none_or(|limit| accepted < limit) {
        let stream = acceptor.accept()?;
        accepted += 1;
        let leaked_tx = leaked_tx.clone();
        shared::spawn("leak", move || {
            read_until_eof(&stream);
            // The receiver outlives every sender: it is held until the process ends.
            let _ = leaked_tx.send(stream);
        })?;
        // Those at EOF move to the Vec; the others wait in the channel, just as open.
        leaked.extend(leaked_rx.try_iter());
    }

    // --leak N: stop listening, so that later connections are refused rather than left
    // unaccepted in the backlog, where they would reach CLOSE_WAIT too and blur "N".
    drop(acceptor);
    drop(leaked_tx);
    while (leaked.len() as u64) < accepted {
        let Ok(stream) = leaked_rx.recv() else { break };
        leaked.push(stream);
    }
    shared::say(&format!("done {}", leaked.len()))?;
    shared::hold_forever()
}

/// Reads and discards until the peer closes (or resets) the connection.
fn read_until_eof(mut stream: &TcpStream) {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // A reset: the socket is closed by the kernel, and still held here.
            Err(_) => return,
        }
    }
}
