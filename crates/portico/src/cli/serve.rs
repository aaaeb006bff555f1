//! `portico serve`: run everything the config names until SIGTERM (SIGHUP reloads).

use std::path::Path;

use crate::config::Source;
use crate::server::{init_tracing, runtime, Server};

pub fn serve(path: &Path) -> anyhow::Result<()> {
    let source = Source::read(path)?;
    let config = source.parse()?;
    init_tracing(&config);
    runtime()?.block_on(async move {
        let server = Server::start(source, config).await?;
        server.run_until_signal().await
    })
}
