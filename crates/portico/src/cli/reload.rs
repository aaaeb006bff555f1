//! `portico reload`: validate the config, then signal the running `portico serve` to load it.

use std::path::Path;

use anyhow::Context;

use crate::config::PorticoConfig;

pub fn reload(path: &Path) -> anyhow::Result<()> {
    let (_, config) = crate::node::load(path)?;
    let pid = signal_server(&config)?;
    println!(
        "{}: valid; reload signalled to portico serve (pid {pid})",
        path.display()
    );
    Ok(())
}

/// Sends SIGHUP to the `portico serve` of this config (pid file in the state directory).
pub(crate) fn signal_server(config: &PorticoConfig) -> anyhow::Result<i32> {
    let pid_file = config.state_dir.join(crate::server::PID_FILE);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .with_context(|| {
            format!(
                "no running `portico serve` found: cannot read {}",
                pid_file.display()
            )
        })?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        anyhow::bail!(
            "cannot signal process {pid} (from {}): {}",
            pid_file.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(pid)
}

/// Whether process `pid` still runs (exists and is not a zombie).
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: `pid (comm) S …`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
