//! Boots a kernel and initramfs under qemu and collects its serial console.
//!
//! Software emulation (`-accel tcg`): /dev/kvm exists on these machines but nested KVM
//! fails. One CPU, so the guest also shows how portwatch copes when it shares its only
//! CPU with the load it watches.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// What a boot printed, and how it ended.
pub struct Boot {
    /// The serial console (and qemu's own messages), one entry per line.
    pub lines: Vec<String>,
    pub elapsed: Duration,
    pub timed_out: bool,
}

/// Boots and waits for the VM to power off, or kills it after `timeout`. Each console
/// line goes to `log` and to `on_line` as it arrives.
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<Boot> {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(["-nographic", "-no-reboot"])
        // -nographic multiplexes qemu's monitor on stdio: keep the host's terminal out.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running qemu-system-x86_64")?;

    let (sender, lines) = mpsc::channel();
    let readers = [
        forward_lines(child.stdout.take().context("qemu stdout")?, sender.clone()),
        forward_lines(child.stderr.take().context("qemu stderr")?, sender),
    ];
    // Written as lines arrive, so a hung guest's log shows how far it got.
    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut collected = Vec::new();
    let deadline = started + timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                on_line(&line);
                writeln!(log_file, "{line}")?;
                collected.push(line);
            }
            // Both pipes closed: qemu has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    for reader in readers {
        let _ = reader.join();
    }
    // Lines that arrived between the kill and the end of the pipes.
    for line in lines.try_iter() {
        writeln!(log_file, "{line}")?;
        collected.push(line);
    }
    Ok(Boot {
        lines: collected,
        elapsed: started.elapsed(),
        timed_out,
    })
}

/// Sends each line of `pipe` (lossily decoded, carriage returns dropped) to `sender`.
fn forward_lines(
    pipe: impl Read + Send + 'static,
    sender: mpsc::Sender<String>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches(['\n', '\r'])
                .replace('\r', "");
            if sender.send(text).is_err() {
                return;
            }
            line.clear();
        }
    })
}
